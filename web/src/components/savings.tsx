// What the optimizer's plans saved at a site over the last 7 days: the measured grid exchange priced
// as the plans priced it, against what they expected and against the self-consumption controller
// alone on the same measured consumption and production (GetRealisedSavings, docs/optimizer.md).
import { realisedSavings } from "../data";
import { eur } from "../format";
import { useLoad } from "../load";

const QUARTER_MS = 15 * 60_000;
const DAYS = 7;

export function SavingsPanel({ org, site }: { org: string; site: string }) {
  // The last ended quarter hour; the service compares ended slots only.
  const to = new Date(Math.floor(Date.now() / QUARTER_MS) * QUARTER_MS);
  const from = new Date(to.getTime() - DAYS * 24 * 3600_000);
  const loaded = useLoad(() => realisedSavings(org, site, from, to), [org, site, to.getTime()], 15 * 60_000);
  const mine = loaded.data?.sites?.[0];
  const compared = mine?.slotCount ?? 0;
  return (
    <section aria-labelledby="savings-title">
      <h2 id="savings-title">What the plans saved</h2>
      {loaded.error && (
        <p role="alert" class="error">
          {loaded.error}
        </p>
      )}
      {mine && compared === 0 && (
        <p data-compared-slots="0">
          No slot to compare in the last {DAYS} days: one needs a plan in force and the site's grid meters and
          batteries measured ({mine.missingSlotCount ?? 0} slots without).
        </p>
      )}
      {mine && compared > 0 && (
        <>
          <p data-compared-slots={compared} data-savings-eur={(mine.savingsEur ?? 0).toFixed(2)}>
            Last {DAYS} days: saved <strong>{eur(mine.savingsEur)}</strong> and {(mine.savingsCo2Kg ?? 0).toFixed(1)} kg CO2
            against self-consumption alone, over {compared} quarter hours ({mine.missingSlotCount ?? 0} without a plan
            or a measurement); {eur(mine.savingsEurPerDay)} a day.
          </p>
          <table class="small">
            <thead>
              <tr>
                <th scope="col">Grid cost over the compared slots</th>
                <th scope="col">EUR</th>
              </tr>
            </thead>
            <tbody>
              <tr>
                <th scope="row">measured, priced as planned</th>
                <td>{(mine.realised?.costEur ?? 0).toFixed(2)}</td>
              </tr>
              <tr>
                <th scope="row">what the plans expected</th>
                <td>{(mine.planned?.costEur ?? 0).toFixed(2)}</td>
              </tr>
              <tr>
                <th scope="row">self-consumption alone</th>
                <td>{(mine.baseline?.costEur ?? 0).toFixed(2)}</td>
              </tr>
            </tbody>
          </table>
        </>
      )}
    </section>
  );
}

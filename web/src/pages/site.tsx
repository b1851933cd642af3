// The site page's first cut: the site's edges with their state and every channel's latest value.
// The energy flow, charts, prices and commands of issue 19 are added here.
import { lastSegment } from "../api";
import { getSite, latestValues, listEdges, siteState } from "../data";
import * as fmt from "../format";
import { useLoad } from "../load";

export function SitePage({ org, site }: { org: string; site: string }) {
  const info = useLoad(() => getSite(org, site), [org, site]);
  const edges = useLoad(() => listEdges(org, site), [org, site], 10_000);
  const values = useLoad(() => latestValues(org, site), [org, site], 5_000);
  const tz = info.data?.timeZone;
  const prefix = `organizations/${org}/sites/${site}/edges/`;
  return (
    <section aria-labelledby="site-title">
      <h1 id="site-title">{info.data?.displayName || site}</h1>
      {info.error && <p role="alert" class="error">{info.error}</p>}
      {info.data && (
        <p class="meta">
          {[tz, info.data.countryCode, info.data.biddingZone && `zone ${info.data.biddingZone}`].filter(Boolean).join(" · ")}
          {edges.data && <> · <span class="state">{siteState(edges.data)}</span></>}
        </p>
      )}
      <h2>Edges</h2>
      {edges.error && <p role="alert" class="error">{edges.error}</p>}
      {edges.data && (
        <ul class="edges">
          {edges.data.map((e) => (
            <li key={e.name}>
              <strong>{e.displayName || lastSegment(e.name)}</strong>{" "}
              {(e.connectionState ?? "EDGE_CONNECTION_STATE_UNSPECIFIED").replace("EDGE_CONNECTION_STATE_", "").replace("_", " ").toLowerCase()}
              {" · last seen "}
              {fmt.time(e.lastSeenTime, tz)}
            </li>
          ))}
        </ul>
      )}
      <h2>Latest values</h2>
      {values.error && <p role="alert" class="error">{values.error}</p>}
      {values.data && values.data.length === 0 && <p>No values received yet.</p>}
      {values.data && values.data.length > 0 && (
        <div class="table-scroll">
          <table>
            <thead>
              <tr>
                <th scope="col">Channel</th>
                <th scope="col" class="num">Value</th>
                <th scope="col">Measured</th>
              </tr>
            </thead>
            <tbody>
              {values.data.map((v) => (
                <tr key={v.channel}>
                  <th scope="row">{(v.channel ?? "").replace(prefix, "").replace("/devices/", " › ").replace("/channels/", " › ")}</th>
                  <td class="num">{fmt.number(v.value, v.unit)}</td>
                  <td>{fmt.time(v.sampleTime, tz)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

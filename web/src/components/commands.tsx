// Send a setpoint with confirmation and watch its lifecycle live (QUEUED -> DELIVERED -> RECEIVED ->
// EXECUTED, or the state and reason that ended it). Shown only to operators and admins; the API
// enforces the role anyway. Bad input is refused here in words, and what the API refuses (a value
// outside the device's limits) is shown in its own words.
import { useEffect, useState } from "preact/hooks";
import { api, describeError, type Schemas } from "../api";
import { openStream, type LinkState } from "../live";
import * as fmt from "../format";
import type { Writable } from "../data";

type Command = Schemas["emma.command.v1.Command"];
type Watch = Schemas["emma.command.v1.WatchCommandResponse"];

export type Target = Writable;

const FINAL = new Set([
  "COMMAND_STATE_EXECUTED",
  "COMMAND_STATE_REJECTED_BY_EDGE",
  "COMMAND_STATE_FAILED",
  "COMMAND_STATE_CANCELLED",
]);

export function stateWord(state: string | undefined): string {
  return (state ?? "COMMAND_STATE_UNSPECIFIED").replace("COMMAND_STATE_", "").replace(/_/g, " ");
}

function unitWord(unit: string): string {
  return unit === "W" ? "watts" : unit ? unit : "the channel's unit";
}

/** The value typed for a target, or why it is refused: the page checks what the profile declares
 * (number, integer, enum, static limits) before the API is asked, which checks again with the dynamic
 * limits and the edge's own declaration. */
export function parseSetpoint(raw: string, t: Target): number | string {
  const text = raw.trim().replace(/\u2212/g, "-");
  if (!text) return t.enumValues.length ? "Choose a value." : `Enter a setpoint in ${unitWord(t.unit)}.`;
  const value = Number(text);
  if (!Number.isFinite(value))
    return `"${raw.trim()}" is not a number; enter the setpoint in ${unitWord(t.unit)}, for example ${t.min !== undefined && t.min < 0 ? "-2000" : "2000"}.`;
  if (t.enumValues.length && !t.enumValues.some((e) => e.number === value))
    return `${fmt.number(value)} is not one of ${t.channel}'s values (${t.enumValues.map((e) => `${e.number} ${e.label}`).join(", ")}).`;
  if ((t.valueType === "VALUE_TYPE_INTEGER" || t.valueType === "VALUE_TYPE_BOOLEAN") && !Number.isInteger(value))
    return `${t.channel} takes whole numbers; ${fmt.number(value)} is not one.`;
  if (t.valueType === "VALUE_TYPE_BOOLEAN" && value !== 0 && value !== 1) return `${t.channel} takes 0 (off) or 1 (on).`;
  if (t.min !== undefined && value < t.min)
    return `${fmt.number(value, t.unit)} is below the smallest value ${t.channel} takes, ${fmt.number(t.min, t.unit)} (its device profile).`;
  if (t.max !== undefined && value > t.max)
    return `${fmt.number(value, t.unit)} is above the largest value ${t.channel} takes, ${fmt.number(t.max, t.unit)} (its device profile).`;
  return value;
}

/** What the form says about a target: its range, its dynamic limits now, its sign convention. */
function targetHelp(t: Target, latest: (edge: string, channel: string) => number | undefined): string {
  const parts: string[] = [];
  if (!t.registered) parts.push("Reported by the edge but not registered: no limits known here, the server checks the edge's declaration");
  else if (t.min !== undefined && t.max !== undefined) parts.push(`From ${fmt.number(t.min, t.unit)} to ${fmt.number(t.max, t.unit)}`);
  else if (t.min !== undefined) parts.push(`At least ${fmt.number(t.min, t.unit)}`);
  else if (t.max !== undefined) parts.push(`At most ${fmt.number(t.max, t.unit)}`);
  else parts.push(`In ${unitWord(t.unit)}`);
  const dyn: string[] = [];
  const device = t.channel.split("/")[0];
  if (t.dynamicMax) {
    const v = latest(t.edge, `${device}/${t.dynamicMax}`);
    dyn.push(`positive values up to ${v === undefined ? "?" : fmt.number(v, t.unit)} (${t.dynamicMax})`);
  }
  if (t.dynamicMin) {
    const v = latest(t.edge, `${device}/${t.dynamicMin}`);
    dyn.push(`negative down to ${v === undefined ? "?" : fmt.number(-Math.abs(v), t.unit)} (${t.dynamicMin})`);
  }
  if (dyn.length) parts.push(`now ${dyn.join(", ")}`);
  if (/^SetActivePower$/.test(t.channel.split("/")[1] ?? "") && /^(battery|bat)/i.test(device ?? ""))
    parts.push("for a battery positive discharges, negative charges");
  if (t.description) parts.push(t.description);
  return parts.join("; ") + ".";
}

export function CommandPanel({
  org,
  site,
  targets,
  timeZone,
  latest = () => undefined,
}: {
  org: string;
  site: string;
  targets: Target[];
  timeZone?: string | undefined;
  latest?: (edge: string, channel: string) => number | undefined;
}) {
  const [target, setTarget] = useState(0);
  const [raw, setRaw] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [pending, setPending] = useState<{ target: Target; value: number } | null>(null);
  const [busy, setBusy] = useState(false);
  const [command, setCommand] = useState<Command | null>(null);
  const [link, setLink] = useState<LinkState | null>(null);

  useEffect(() => {
    if (!command?.name || FINAL.has(command.state ?? "")) return;
    return openStream<Watch>(`/v1/${command.name}:watch`, {
      onData: (m) => {
        if (m.command) setCommand(m.command);
        return FINAL.has(m.command?.state ?? "");
      },
      onState: (s) => setLink(s),
      reconnect: true,
    });
  }, [command?.name]);

  if (targets.length === 0) return <p>No device of this site has a writable channel.</p>;
  const chosen = targets[Math.min(target, targets.length - 1)]!;
  const choices = chosen.enumValues.length
    ? chosen.enumValues
    : chosen.valueType === "VALUE_TYPE_BOOLEAN"
      ? [
          { number: 0, label: "off" },
          { number: 1, label: "on" },
        ]
      : [];

  function review(event: Event) {
    event.preventDefault();
    const value = parseSetpoint(raw, { ...chosen, enumValues: choices });
    if (typeof value === "string") {
      setProblem(value);
      return;
    }
    setProblem(null);
    setPending({ target: chosen, value });
  }

  async function send() {
    if (!pending) return;
    setBusy(true);
    try {
      const { edge, channel } = pending.target;
      const { data, error, response } = await api.POST(
        "/v1/organizations/{organization}/sites/{site}/edges/{edge}/commands",
        {
          params: { path: { organization: org, site, edge }, query: { requestId: crypto.randomUUID() } },
          body: { channel, value: pending.value },
        },
      );
      if (!data) {
        setProblem(`The command was refused: ${describeError(error, response)}`);
      } else {
        setCommand(data);
        setLink(null);
      }
    } catch (e) {
      setProblem(`The server could not be reached (${e instanceof Error ? e.message : String(e)}).`);
    } finally {
      setBusy(false);
      setPending(null);
    }
  }

  const unit = chosen.unit;
  const unitOf = (channel: string | undefined) => targets.find((t) => t.channel === channel)?.unit ?? "";
  const pendingUnit = pending?.target.unit ?? "";
  const label = pending?.target.enumValues.find((e) => e.number === pending.value)?.label;
  const state = command?.state;
  return (
    <div class="commands">
      <form class="setpoint" onSubmit={review} noValidate>
        <label>
          Device
          <select
            value={String(target)}
            onChange={(e) => {
              setTarget(Number((e.currentTarget as HTMLSelectElement).value));
              setRaw("");
              setProblem(null);
            }}
          >
            {targets.map((t, i) => (
              <option key={`${t.edge}/${t.channel}`} value={String(i)}>
                {t.edge} › {t.channel}
                {t.unit ? ` (${t.unit})` : ""}
              </option>
            ))}
          </select>
        </label>
        {choices.length > 0 ? (
          <label>
            Value
            <select name="setpoint" value={raw} aria-describedby="setpoint-help" onChange={(e) => setRaw((e.currentTarget as HTMLSelectElement).value)}>
              <option value="">Choose…</option>
              {choices.map((c) => (
                <option key={c.number} value={String(c.number)}>
                  {c.label} ({c.number})
                </option>
              ))}
            </select>
          </label>
        ) : (
          <label>
            Setpoint{unit ? ` (${unit})` : ""}
            <input
              name="setpoint"
              inputMode="decimal"
              value={raw}
              aria-describedby="setpoint-help"
              onInput={(e) => setRaw((e.currentTarget as HTMLInputElement).value)}
            />
          </label>
        )}
        <button type="submit" disabled={busy || pending !== null}>
          Send setpoint…
        </button>
        <p id="setpoint-help" class="small meta" data-limits={`${chosen.min ?? ""}..${chosen.max ?? ""}`}>
          {targetHelp(chosen, latest)}
        </p>
      </form>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      {pending && (
        <div class="confirm" role="alertdialog" aria-labelledby="confirm-text">
          <p id="confirm-text">
            Send {label ? `${label} (${pending.value})` : fmt.number(pending.value, pendingUnit)} to {pending.target.channel.split("/")[1]} of{" "}
            {pending.target.device} on edge {pending.target.edge}?
          </p>
          <button type="button" onClick={() => void send()} disabled={busy}>
            Confirm
          </button>{" "}
          <button type="button" class="secondary" onClick={() => setPending(null)} disabled={busy}>
            Cancel
          </button>
        </div>
      )}
      {command && (
        <div class="lifecycle" aria-live="polite">
          <p>
            Command {fmt.number(command.value, unitOf(command.channel))} to {command.channel}:{" "}
            <strong class={`cmd-state cmd-${stateWord(state).toLowerCase().replace(/ /g, "-")}`} data-state={state}>
              {stateWord(state)}
            </strong>
            {command.stateReason && <> ({command.stateReason})</>}
            {state === "COMMAND_STATE_EXECUTED" && command.appliedValue !== undefined && (
              <> · applied {fmt.number(command.appliedValue, unitOf(command.channel))}</>
            )}
            {link === "reconnecting" && <span class="small"> · reconnecting to the live status…</span>}
          </p>
          <ol class="transitions">
            {(command.transitions ?? []).map((t, i) => (
              <li key={i}>
                {stateWord(t.toState)} {fmt.time(t.transitionTime, timeZone)}
                {(t.reason || t.message) && <span class="small"> — {[t.reason, t.message].filter(Boolean).join(": ")}</span>}
              </li>
            ))}
          </ol>
        </div>
      )}
    </div>
  );
}

/** A command by name, watched live until it is final (the alarms centre's recommended actions). */
export function WatchedCommand({ name, timeZone }: { name: string; timeZone?: string | undefined }) {
  const [command, setCommand] = useState<Command | null>(null);
  const [link, setLink] = useState<LinkState | null>(null);
  useEffect(
    () =>
      openStream<Watch>(`/v1/${name}:watch`, {
        onData: (m) => {
          if (m.command) setCommand(m.command);
          return FINAL.has(m.command?.state ?? "");
        },
        onState: setLink,
        reconnect: true,
      }),
    [name],
  );
  const state = command?.state;
  return (
    <p class="lifecycle small" aria-live="polite">
      Command {command ? `${fmt.number(command.value)} to ${command.channel}` : name.split("/").pop()}:{" "}
      <strong class={`cmd-state cmd-${stateWord(state).toLowerCase().replace(/ /g, "-")}`} data-state={state ?? ""}>
        {command ? stateWord(state) : "…"}
      </strong>
      {command?.stateReason && <> ({command.stateReason})</>}
      {command && state === "COMMAND_STATE_EXECUTED" && <> · {fmt.time(command.updateTime, timeZone)}</>}
      {link === "reconnecting" && <> · reconnecting to the live status…</>}
    </p>
  );
}

// Server-Sent Events from the gateway's streaming routes (`:streamLiveValues`, `:watch`), read with
// fetch and a stream reader: EventSource cannot send the Authorization header, and a token in the
// query string would end up in access logs. A dropped stream reconnects with backoff and says so.
import { describeError } from "./api";
import { refresh, session } from "./auth";

export type LinkState = "connecting" | "live" | "reconnecting" | "ended";

export interface StreamOptions<T> {
  /** Each message; return true to stop (a watched command reached a final state). */
  onData: (message: T) => boolean | void;
  onState?: (state: LinkState, detail?: string) => void;
  /** Reconnect when the server ends the stream (live values); false for watches that end by design. */
  reconnect?: boolean;
}

const MAX_BACKOFF_MS = 15_000;

export function openStream<T>(path: string, options: StreamOptions<T>): () => void {
  const controller = new AbortController();
  let stopped = false;
  const stop = () => {
    stopped = true;
    controller.abort();
  };

  const run = async () => {
    let failures = 0;
    while (!stopped) {
      options.onState?.(failures === 0 ? "connecting" : "reconnecting");
      let detail = "";
      try {
        const s = session();
        if (s && s.accessExpires - Date.now() < 5_000) await refresh();
        const token = session()?.accessToken;
        const response = await fetch(path, {
          headers: { accept: "text/event-stream", ...(token ? { authorization: `Bearer ${token}` } : {}) },
          signal: controller.signal,
        });
        if (!response.ok || !response.body) {
          const body: unknown = await response.json().catch(() => undefined);
          if (response.status === 401) await refresh();
          throw new Error(describeError(body, response));
        }
        options.onState?.("live");
        failures = 0;
        if (await relay(response.body, options.onData)) {
          stop();
          options.onState?.("ended");
          return;
        }
        if (!options.reconnect) {
          options.onState?.("ended");
          return;
        }
        detail = "the server ended the stream";
      } catch (e) {
        if (stopped) return;
        detail = e instanceof Error ? e.message : String(e);
      }
      failures += 1;
      options.onState?.("reconnecting", detail);
      await new Promise((r) => window.setTimeout(r, Math.min(500 * 2 ** failures, MAX_BACKOFF_MS)));
    }
  };
  void run();
  return stop;
}

/** Reads SSE frames until the body ends (false) or onData asks to stop (true). */
async function relay<T>(body: ReadableStream<Uint8Array>, onData: (m: T) => boolean | void): Promise<boolean> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let end: number;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data: string[] = [];
        for (const line of frame.split("\n")) {
          if (line.startsWith(":")) continue; // keep-alive comment
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
        }
        if (data.length === 0) continue;
        const doc: unknown = JSON.parse(data.join("\n"));
        if (event === "error") throw new Error(describeError(doc));
        if (onData(doc as T) === true) return true;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

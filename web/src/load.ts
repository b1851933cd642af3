// useLoad: one async read with its loading and error state, optionally repeated (polling until the
// live SSE views land). A stale answer (the page moved on) is dropped.
import { useEffect, useState } from "preact/hooks";

export interface Loaded<T> {
  data: T | undefined;
  error: string | undefined;
  loading: boolean;
}

export function useLoad<T>(load: () => Promise<T>, deps: unknown[], everyMs = 0): Loaded<T> {
  const [state, setState] = useState<Loaded<T>>({ data: undefined, error: undefined, loading: true });
  useEffect(() => {
    let live = true;
    let timer: number | undefined;
    setState((s) => ({ ...s, loading: true }));
    const run = async () => {
      try {
        const data = await load();
        if (live) setState({ data, error: undefined, loading: false });
      } catch (e) {
        if (live) setState((s) => ({ data: s.data, error: e instanceof Error ? e.message : String(e), loading: false }));
      }
      if (live && everyMs > 0) timer = window.setTimeout(run, everyMs);
    };
    void run();
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, deps);
  return state;
}

/** Date.now(), updated every `everyMs`: re-renders a page whose view depends on the time. */
export function useNow(everyMs: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = window.setInterval(() => setNow(Date.now()), everyMs);
    return () => window.clearInterval(t);
  }, [everyMs]);
  return now;
}

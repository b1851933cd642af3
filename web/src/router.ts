// A tiny history router: pages are plain paths (served by the gateway's index.html fallback), so a
// page can be bookmarked and reloaded.
import { useEffect, useState } from "preact/hooks";

const listeners = new Set<() => void>();

export function navigate(to: string, replace = false): void {
  if (to === location.pathname + location.search) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  for (const l of listeners) l();
}

window.addEventListener("popstate", () => {
  for (const l of listeners) l();
});

export function usePath(): string {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const update = () => setPath(location.pathname);
    listeners.add(update);
    return () => listeners.delete(update);
  }, []);
  return path;
}

export type Route =
  | { page: "login" }
  | { page: "home" }
  | { page: "fleet"; org: string }
  | { page: "site"; org: string; site: string }
  | { page: "alarms"; org: string }
  | { page: "missing"; path: string };

const ID = "([a-z0-9][a-z0-9-]*)";

export function parse(path: string): Route {
  let m: RegExpMatchArray | null;
  if (path === "/" || path === "") return { page: "home" };
  if (path === "/login") return { page: "login" };
  if ((m = path.match(new RegExp(`^/organizations/${ID}/?$`)))) return { page: "fleet", org: m[1]! };
  if ((m = path.match(new RegExp(`^/organizations/${ID}/alarms/?$`)))) return { page: "alarms", org: m[1]! };
  if ((m = path.match(new RegExp(`^/organizations/${ID}/sites/${ID}/?$`))))
    return { page: "site", org: m[1]!, site: m[2]! };
  return { page: "missing", path };
}

/** Follows a same-origin link without reloading the page (modifier clicks open tabs as usual). */
export function onLinkClick(event: MouseEvent): void {
  const a = (event.currentTarget as HTMLAnchorElement | null) ?? null;
  if (!a || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(a.getAttribute("href") ?? "/");
}

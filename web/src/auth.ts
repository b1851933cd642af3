// Login, refresh before expiry and logout with the identity service's tokens (docs/security.md).
// The session lives in localStorage so a reload or a second tab stays logged in; refresh rotates the
// refresh token and a token presented twice revokes the whole session, so tabs refresh one at a time
// under a Web Lock and adopt whatever another tab stored meanwhile.
import { api, describeError, type Role, type User } from "./api";

export interface Session {
  accessToken: string;
  accessIssued: number; // epoch ms, when this browser received it
  accessExpires: number; // epoch ms
  refreshToken: string;
  refreshExpires: number;
  user: User;
}

const KEY = "emma.session";
// Refresh this long before the access token expires (a fifth of its lifetime when that is shorter).
const MARGIN_MS = 60_000;

type Listener = (session: Session | null, reason?: string) => void;
const listeners = new Set<Listener>();
let current: Session | null = load();
let timer: number | undefined;

function load(): Session | null {
  try {
    const raw = localStorage.getItem(KEY);
    const s = raw ? (JSON.parse(raw) as Session) : null;
    return s && s.refreshExpires > Date.now() ? s : null;
  } catch {
    return null;
  }
}

function store(session: Session | null, reason?: string): void {
  current = session;
  if (session) localStorage.setItem(KEY, JSON.stringify(session));
  else localStorage.removeItem(KEY);
  schedule();
  for (const l of listeners) l(session, reason);
}

function ms(time: string | undefined): number {
  const t = time ? Date.parse(time) : NaN;
  return Number.isFinite(t) ? t : 0;
}

function schedule(): void {
  window.clearTimeout(timer);
  if (!current) return;
  const lifetime = current.accessExpires - current.accessIssued;
  const delay = Math.max(0, current.accessExpires - Date.now() - Math.min(MARGIN_MS, lifetime / 5));
  timer = window.setTimeout(() => void refresh(), delay);
}

export function session(): Session | null {
  return current;
}

export function subscribe(listener: Listener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** The caller's role in an organization (ROLE_UNSPECIFIED when not a member, e.g. a platform admin). */
export function roleIn(org: string): Role {
  const m = current?.user.memberships?.find((x) => x.name?.startsWith(`organizations/${org}/`) && !x.pending);
  return m?.role ?? "ROLE_UNSPECIFIED";
}

export async function login(email: string, password: string): Promise<string | null> {
  const { data, error, response } = await api.POST("/v1/auth:login", { body: { email, password } });
  if (!data || !data.accessToken || !data.refreshToken || !data.user) return describeError(error, response);
  store({
    accessToken: data.accessToken,
    accessIssued: Date.now(),
    accessExpires: ms(data.accessTokenExpireTime),
    refreshToken: data.refreshToken,
    refreshExpires: ms(data.refreshTokenExpireTime),
    user: data.user,
  });
  return null;
}

async function withLock<T>(work: () => Promise<T>): Promise<T> {
  if (navigator.locks) return navigator.locks.request("emma.session.refresh", work);
  return work();
}

/** Exchanges the refresh token for new tokens; false when the session is over (then logged out). */
export async function refresh(): Promise<boolean> {
  const before = current;
  if (!before) return false;
  return withLock(async () => {
    const stored = load();
    if (!stored) {
      store(null, "Your session has ended; please log in again.");
      return false;
    }
    if (stored.accessExpires > before.accessExpires) {
      store(stored); // another tab refreshed already
      return true;
    }
    try {
      const { data, error, response } = await api.POST("/v1/auth:refresh", {
        body: { refreshToken: stored.refreshToken },
      });
      if (data?.accessToken && data.refreshToken) {
        store({
          ...stored,
          accessToken: data.accessToken,
          accessIssued: Date.now(),
          accessExpires: ms(data.accessTokenExpireTime),
          refreshToken: data.refreshToken,
          refreshExpires: ms(data.refreshTokenExpireTime),
        });
        return true;
      }
      if (response.status === 401 || response.status === 403 || response.status === 400) {
        store(null, `Your session has ended: ${describeError(error, response)}`);
        return false;
      }
    } catch {
      // The gateway is unreachable: keep the session and try again shortly.
    }
    window.clearTimeout(timer);
    timer = window.setTimeout(() => void refresh(), 10_000);
    return Date.now() < stored.accessExpires;
  });
}

export async function logout(): Promise<void> {
  const s = current;
  store(null, "You have logged out.");
  if (s) {
    // Revokes the session on the server, so the refresh token in this browser is worthless now.
    await api
      .POST("/v1/auth:logout", { body: {}, headers: { authorization: `Bearer ${s.accessToken}` } })
      .catch(() => undefined);
  }
}

// Every API call carries the access token, refreshed first when it is about to expire (a sleeping
// laptop's timers fire late).
api.use({
  async onRequest({ request }) {
    if (request.url.includes("/v1/auth:")) return request;
    if (current && current.accessExpires - Date.now() < 5_000) await refresh();
    if (current) request.headers.set("authorization", `Bearer ${current.accessToken}`);
    return request;
  },
  async onResponse({ response }) {
    // A 401 on a non-auth call: the session was revoked elsewhere (logout in another tab, an admin).
    if (response.status === 401 && current && !response.url.includes("/v1/auth:")) {
      if (!(await refresh())) return response;
    }
    return response;
  },
});

window.addEventListener("storage", (event) => {
  if (event.key !== KEY) return;
  const next = load();
  if (!next && current) store(null, "You have logged out in another tab.");
  else if (next) store(next);
});
schedule();

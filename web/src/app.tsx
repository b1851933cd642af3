// The shell: login gate, header with the organization and site switchers, and the page of the path.
import { useEffect, useState } from "preact/hooks";
import { lastSegment } from "./api";
import { logout, roleIn, session, subscribe, type Session } from "./auth";
import { listOrganizations, listSites } from "./data";
import { useLoad } from "./load";
import { LoginPage } from "./pages/login";
import { FleetPage } from "./pages/fleet";
import { SitePage } from "./pages/site";
import { AlarmsPage } from "./pages/alarms";
import { navigate, onLinkClick, parse, usePath } from "./router";

const LAST_ORG = "emma.organization";

function useSession(): [Session | null, string | undefined] {
  const [state, setState] = useState<[Session | null, string | undefined]>([session(), undefined]);
  useEffect(() => subscribe((s, reason) => setState([s, reason])), []);
  return state;
}

export function App() {
  const [current, reason] = useSession();
  const path = usePath();
  if (!current) return <LoginPage notice={reason} />;
  return <Shell session={current} path={path} />;
}

function Shell({ session, path }: { session: Session; path: string }) {
  const route = parse(path);
  const orgs = useLoad(listOrganizations, [session.user.name]);
  const org = route.page === "fleet" || route.page === "site" || route.page === "alarms" ? route.org : undefined;
  const site = route.page === "site" ? route.site : undefined;
  const sites = useLoad(() => (org ? listSites(org) : Promise.resolve([])), [org]);

  // "/" and "/login" go to the last organization used, else the first one the user can see.
  useEffect(() => {
    if (route.page !== "home" && route.page !== "login") return;
    const ids = (orgs.data ?? []).map((o) => lastSegment(o.name));
    const remembered = localStorage.getItem(LAST_ORG);
    const target = remembered && ids.includes(remembered) ? remembered : ids[0];
    if (target) navigate(`/organizations/${target}`, true);
  }, [route.page, orgs.data]);
  useEffect(() => {
    if (org) localStorage.setItem(LAST_ORG, org);
  }, [org]);

  let page;
  if (route.page === "fleet") page = <FleetPage org={route.org} />;
  else if (route.page === "site") page = <SitePage org={route.org} site={route.site} />;
  else if (route.page === "alarms") page = <AlarmsPage org={route.org} />;
  else if (route.page === "missing")
    page = (
      <section>
        <h1>Page not found</h1>
        <p>
          Nothing here at <code>{route.path}</code>. <a href="/" onClick={onLinkClick}>Back to the fleet</a>
        </p>
      </section>
    );
  else if (orgs.error) page = <p role="alert" class="error">Could not list organizations: {orgs.error}</p>;
  else if (orgs.data && orgs.data.length === 0) page = <p>You are not a member of any organization yet.</p>;
  else page = <p aria-busy="true">Loading…</p>;

  const role = org ? roleIn(org) : "ROLE_UNSPECIFIED";
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="bar">
        <a class="brand" href={org ? `/organizations/${org}` : "/"} onClick={onLinkClick} aria-label="EMMA fleet overview">
          EMMA
        </a>
        <label class="switch">
          <span>Organization</span>
          <select
            aria-label="Organization"
            value={org ?? ""}
            onChange={(e) => navigate(`/organizations/${(e.currentTarget as HTMLSelectElement).value}`)}
          >
            {!org && <option value="">Choose…</option>}
            {(orgs.data ?? []).map((o) => (
              <option key={o.name} value={lastSegment(o.name)}>
                {o.displayName || lastSegment(o.name)}
              </option>
            ))}
          </select>
        </label>
        <label class="switch">
          <span>Site</span>
          <select
            aria-label="Site"
            value={site ?? ""}
            disabled={!org}
            onChange={(e) => {
              const v = (e.currentTarget as HTMLSelectElement).value;
              navigate(v ? `/organizations/${org}/sites/${v}` : `/organizations/${org}`);
            }}
          >
            <option value="">All sites</option>
            {(sites.data ?? []).map((s) => (
              <option key={s.name} value={lastSegment(s.name)}>
                {s.displayName || lastSegment(s.name)}
              </option>
            ))}
          </select>
        </label>
        {org && (
          <nav class="nav" aria-label="Pages">
            <a href={`/organizations/${org}/alarms`} onClick={onLinkClick} aria-current={route.page === "alarms" ? "page" : undefined}>
              Alarms
            </a>
          </nav>
        )}
        <span class="who">
          <span class="email">{session.user.email}</span>
          {role !== "ROLE_UNSPECIFIED" && <span class="role">{role.replace("ROLE_", "").toLowerCase()}</span>}
        </span>
        <button type="button" onClick={() => void logout()}>
          Log out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </>
  );
}

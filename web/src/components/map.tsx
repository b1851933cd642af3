// The fleet map: Leaflet over a bundled base layer of country outlines (Natural Earth 1:110m, public
// domain, from world-atlas; served by the gateway as /countries-110m.json), so it works offline. When
// the gateway is configured with a tile server (EMMA_GATEWAY_MAP_TILES) its tiles are drawn as well.
import L from "leaflet";
import "leaflet/dist/leaflet.css";
import { useEffect, useRef } from "preact/hooks";
import { feature } from "topojson-client";
import type { GeometryCollection, Topology } from "topojson-specification";
import { cssVar } from "./chart";

export interface MapSite {
  id: string;
  label: string;
  lat: number;
  lon: number;
  state: string;
  href: string;
  detail: string;
}

let outlines: Promise<GeoJSON.FeatureCollection> | null = null;

function countries(): Promise<GeoJSON.FeatureCollection> {
  outlines ??= fetch("/countries-110m.json")
    .then((r) => {
      if (!r.ok) throw new Error(`the base map could not be loaded (HTTP ${r.status})`);
      return r.json() as Promise<Topology<{ countries: GeometryCollection }>>;
    })
    .then((topo) => feature(topo, topo.objects.countries) as GeoJSON.FeatureCollection);
  return outlines;
}

export function tileServer(): { url: string; attribution: string } | null {
  const url = document.querySelector<HTMLMetaElement>('meta[name="emma-map-tiles"]')?.content ?? "";
  const attribution = document.querySelector<HTMLMetaElement>('meta[name="emma-map-attribution"]')?.content ?? "";
  return url ? { url, attribution } : null;
}

const STATE_COLOUR: Record<string, string> = { online: "--ok", offline: "--bad" };

export function FleetMap({ sites, onOpen }: { sites: MapSite[]; onOpen: (href: string) => void }) {
  const box = useRef<HTMLDivElement>(null);
  const map = useRef<L.Map | null>(null);
  const markers = useRef<L.FeatureGroup | null>(null);
  const open = useRef(onOpen);
  open.current = onOpen;

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    // No zoom or fade animations: an animation still running when the page is left would touch the
    // removed map (Leaflet's _leaflet_pos error), and a dashboard gains nothing from them.
    const m = L.map(el, {
      worldCopyJump: true,
      attributionControl: true,
      zoomSnap: 0.5,
      zoomAnimation: false,
      fadeAnimation: false,
      markerZoomAnimation: false,
    }).setView([45, 5], 3);
    map.current = m;
    const tiles = tileServer();
    if (tiles) L.tileLayer(tiles.url, { attribution: tiles.attribution, maxZoom: 18 }).addTo(m);
    m.attributionControl.setPrefix("");
    m.attributionControl.addAttribution("Natural Earth (public domain)");
    void countries().then(
      (geo) => {
        if (map.current !== m) return;
        L.geoJSON(geo, {
          interactive: false,
          style: {
            color: cssVar("--line", "#d0d7de"),
            weight: 1,
            fillColor: cssVar("--panel", "#f6f8fa"),
            fillOpacity: tiles ? 0 : 1,
            className: "country",
          },
        }).addTo(m);
        markers.current?.bringToFront();
      },
      () => el.setAttribute("data-base-layer", "failed"),
    );
    markers.current = L.featureGroup().addTo(m);
    const resize = new ResizeObserver(() => m.invalidateSize());
    resize.observe(el);
    return () => {
      resize.disconnect();
      m.remove();
      map.current = null;
    };
  }, []);

  const key = sites.map((s) => `${s.id}:${s.state}:${s.detail}`).join("|");
  useEffect(() => {
    const m = map.current;
    const group = markers.current;
    if (!m || !group) return;
    group.clearLayers();
    for (const s of sites) {
      const marker = L.circleMarker([s.lat, s.lon], {
        radius: 9,
        color: cssVar("--fg", "#1b1f23"),
        weight: 2,
        fillColor: cssVar(STATE_COLOUR[s.state] ?? "--warn", "#7d4e00"),
        fillOpacity: 0.9,
        className: `site-marker site-${s.id}`,
      });
      marker.bindTooltip(`${s.label}: ${s.state}${s.detail ? ` · ${s.detail}` : ""}`);
      marker.on("click", () => open.current(s.href));
      group.addLayer(marker);
    }
    if (sites.length) m.fitBounds(group.getBounds().pad(0.5), { maxZoom: 6, animate: false });
  }, [key]);

  return (
    <div
      class="map"
      ref={box}
      role="region"
      aria-label={`Fleet map with ${sites.length} marker${sites.length === 1 ? "" : "s"} (the table below lists the same)`}
      data-sites={sites.length}
    />
  );
}

// Numbers and times in the user's locale; times in the site's time zone when it has one.
const locale = navigator.languages?.[0] ?? navigator.language ?? "en";

export function power(watts: number | undefined): string {
  if (watts === undefined || !Number.isFinite(watts)) return "–";
  const kw = watts / 1000;
  return `${new Intl.NumberFormat(locale, { maximumFractionDigits: Math.abs(kw) < 10 ? 2 : 1 }).format(kw)} kW`;
}

export function number(value: number | undefined, unit = ""): string {
  if (value === undefined || !Number.isFinite(value)) return "–";
  const text = new Intl.NumberFormat(locale, { maximumFractionDigits: 3 }).format(value);
  return unit ? `${text} ${unit}` : text;
}

/** Money as a bill shows it: two decimals, whatever the locale's grouping ("5.26 EUR"). */
export function eur(value: number | undefined): string {
  return `${(value ?? 0).toFixed(2)} EUR`;
}

export function time(iso: string | undefined, timeZone?: string): string {
  if (!iso) return "never";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return "–";
  try {
    return new Intl.DateTimeFormat(locale, { dateStyle: "short", timeStyle: "medium", timeZone: timeZone || undefined }).format(t);
  } catch {
    return new Intl.DateTimeFormat(locale, { dateStyle: "short", timeStyle: "medium" }).format(t);
  }
}

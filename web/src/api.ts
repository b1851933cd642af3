// The typed REST client: paths, parameters and bodies come from src/gen/openapi.ts, generated from the
// gateway's OpenAPI document, so a contract change that breaks a page fails `tsc --noEmit`.
import createClient from "openapi-fetch";
import type { components, paths } from "./gen/openapi";

export type Schemas = components["schemas"];
export type Site = Schemas["emma.registry.v1.Site"];
export type Edge = Schemas["emma.registry.v1.Edge"];
export type Organization = Schemas["emma.registry.v1.Organization"];
export type LatestValue = Schemas["emma.telemetry.v1.LatestValue"];
export type User = Schemas["emma.identity.v1.User"];
export type Role = Schemas["emma.identity.v1.Role"];
export type ApiError = Schemas["Error"];

// Same origin as the API (the gateway serves both), so no base URL and no CORS.
export const api = createClient<paths>({ baseUrl: "" });

/** The API's own words for a failed call (AIP-193 message), else the HTTP status. */
export function describeError(error: unknown, response?: Response): string {
  const message = (error as ApiError | undefined)?.error?.message;
  if (typeof message === "string" && message) return message;
  if (error instanceof Error) return `the server could not be reached (${error.message})`;
  return response ? `the server answered HTTP ${response.status}` : "the request failed";
}

/** The last segment of a resource name: "organizations/acme/sites/gw" -> "gw". */
export function lastSegment(name: string | undefined): string {
  const parts = (name ?? "").split("/");
  return parts[parts.length - 1] ?? "";
}

/**
 * The admin page at /admin: the same static files flared serves locally
 * (flared/admin/static, bundled as Workers static assets), behind the same
 * auth as /api/*. With Cloudflare Access the browser's Access session is
 * enough; with only a bearer token the page's files (which hold no data and no
 * secret) are served and the page asks for the token, which it then sends as
 * `Authorization: Bearer` on every /api/* call.
 *
 * Every response carries a strict Content-Security-Policy: scripts, styles
 * and requests only from this origin, no framing, no inline code.
 */
import type { Context } from "hono";
import { accessSettings, authenticate } from "./auth";
import type { AppEnv } from "./env";
import shared from "../../flared/admin/headers.json";

/** The same headers flared serves the page with locally (one file for both). */
export const ADMIN_CSP = shared.csp.join("; ");

export const ADMIN_HEADERS: Record<string, string> = {
  "Content-Security-Policy": ADMIN_CSP,
  ...shared.headers,
};

/** /admin/<file> -> the asset path; null for anything that is not one of the page's files. */
export function adminAsset(pathname: string): string | null {
  if (pathname === "/admin/" || pathname === "/admin/index.html") return "/index.html";
  const m = /^\/admin\/(admin\.(?:js|css))$/.exec(pathname);
  return m ? `/${m[1]}` : null;
}

export async function serveAdmin(c: Context<AppEnv>): Promise<Response> {
  const url = new URL(c.req.url);
  if (url.pathname === "/admin") return c.redirect("/admin/", 301);
  const asset = adminAsset(url.pathname);
  if (!asset) return c.json({ error: `no admin file ${url.pathname}` }, 404);
  if (accessSettings(c.env)) {
    // Access in front: the page is for Access users only, like the API.
    const auth = await authenticate(c.req.raw, c.env);
    if (!auth.ok) return c.json({ error: auth.error }, auth.status, ADMIN_HEADERS);
  }
  const assets = c.env.ADMIN_ASSETS;
  if (!assets) return c.json({ error: "the admin page's files are not deployed (assets binding missing)" }, 503);
  const res = await assets.fetch(new Request(new URL(asset, url.origin), { method: "GET" }));
  if (!res.ok) return c.json({ error: `admin file ${asset} is missing from this deploy` }, 404);
  const headers = new Headers(res.headers);
  for (const [k, v] of Object.entries(ADMIN_HEADERS)) headers.set(k, v);
  return new Response(res.body, { status: 200, headers });
}

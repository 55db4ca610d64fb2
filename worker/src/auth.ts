/**
 * Authentication of /api/*: a bearer token (the `API_TOKEN` secret) compared
 * in constant time, or a Cloudflare Access JWT (`Cf-Access-Jwt-Assertion`)
 * verified against the team's JWKS. Either one admits the request; with
 * neither configured every request is refused (fail closed).
 *
 * A token in the query string is refused outright, even a valid one: URLs end
 * up in access logs, browser history and Referer headers (the original
 * project leaked its gateway token that way).
 */
import { createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload } from "jose";
import type { MiddlewareHandler } from "hono";
import type { AppEnv, Env } from "./env";

/** Query parameters that look like credentials; any of them is refused. */
export const QUERY_TOKEN_PARAMS = ["token", "access_token", "api_token", "api_key", "key", "auth"];

export type AuthResult =
  | { ok: true; via: "bearer" | "access"; email?: string; serviceToken?: string }
  | { ok: false; status: 400 | 401 | 403 | 503; error: string };

export interface AccessSettings {
  teamDomain: string;
  aud: string;
  allowedEmails: string[];
  /** Client IDs of Access service tokens (the `common_name` claim of their JWTs). */
  allowedServiceTokens: string[];
}

function list(value: string | undefined, lower: boolean): string[] {
  return (value ?? "")
    .split(",")
    .map((e) => (lower ? e.trim().toLowerCase() : e.trim()))
    .filter(Boolean);
}

/** The Access settings from the Worker's vars, or null when Access is off. */
export function accessSettings(env: Env): AccessSettings | null {
  const team = (env.ACCESS_TEAM_DOMAIN ?? "").trim();
  const aud = (env.ACCESS_AUD ?? "").trim();
  if (!team || !aud) return null;
  return {
    teamDomain: team.replace(/^https?:\/\//, "").replace(/\/+$/, ""),
    aud,
    allowedEmails: list(env.ACCESS_ALLOWED_EMAILS, true),
    allowedServiceTokens: list(env.ACCESS_ALLOWED_SERVICE_TOKENS, false),
  };
}

/** SHA-256 both sides first so lengths match, then compare without early exit. */
export async function constantTimeEqual(a: string, b: string): Promise<boolean> {
  const enc = new TextEncoder();
  const [da, db] = await Promise.all([
    crypto.subtle.digest("SHA-256", enc.encode(a)),
    crypto.subtle.digest("SHA-256", enc.encode(b)),
  ]);
  return crypto.subtle.timingSafeEqual(da, db);
}

/** `Authorization: Bearer X` -> X, or null. */
export function bearerToken(header: string | null | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m?.[1] ?? null;
}

/**
 * Access signs application tokens with RS256 today; ES256 is accepted too in
 * case it moves to EC keys (the key still has to be in the team's JWKS).
 * Nothing else (no `none`, no HMAC, whose key would be public) is accepted.
 */
const ACCESS_ALGORITHMS = ["RS256", "ES256"];

// One JWKS cache per team per isolate: jose refetches on an unknown `kid`
// (key rotation) with a cooldown, so a forged kid cannot make us hammer Access.
const jwksCache = new Map<string, ReturnType<typeof createRemoteJWKSet>>();

function jwksFor(teamDomain: string): ReturnType<typeof createRemoteJWKSet> {
  let jwks = jwksCache.get(teamDomain);
  if (!jwks) {
    jwks = createRemoteJWKSet(new URL(`https://${teamDomain}/cdn-cgi/access/certs`), {
      timeoutDuration: 5000,
      cooldownDuration: 30_000,
      cacheMaxAge: 10 * 60_000,
    });
    jwksCache.set(teamDomain, jwks);
  }
  return jwks;
}

/**
 * Whether a verified Access identity is on the allow-lists. A person's JWT
 * carries `email`; a service token's (a machine: CI, a script) has no email
 * but `common_name`, the token's Client ID. Both lists empty: anyone the
 * Access policy admits.
 */
export function accessAllowed(payload: JWTPayload, access: AccessSettings): boolean {
  if (access.allowedEmails.length === 0 && access.allowedServiceTokens.length === 0) return true;
  const email = typeof payload.email === "string" ? payload.email.toLowerCase() : "";
  if (email && access.allowedEmails.includes(email)) return true;
  const commonName = typeof payload.common_name === "string" ? payload.common_name : "";
  return !email && commonName !== "" && access.allowedServiceTokens.includes(commonName);
}

/** Verify an Access JWT: signature (team JWKS), `iss`, `aud`, expiry, and the allow-lists. */
export async function verifyAccessJwt(
  jwt: string,
  access: AccessSettings,
): Promise<{ ok: true; payload: JWTPayload } | { ok: false; error: string; status: 401 | 403 }> {
  // Reject what is not even a compact JWS before any key lookup (no JWKS
  // fetch for garbage).
  if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(jwt)) {
    return { ok: false, status: 401, error: "invalid Access token: malformed" };
  }
  let alg: unknown;
  try {
    alg = decodeProtectedHeader(jwt).alg;
  } catch {
    return { ok: false, status: 401, error: "invalid Access token: malformed" };
  }
  if (typeof alg !== "string" || !ACCESS_ALGORITHMS.includes(alg)) {
    return { ok: false, status: 401, error: "invalid Access token: algorithm not allowed" };
  }
  try {
    const { payload } = await jwtVerify(jwt, jwksFor(access.teamDomain), {
      issuer: `https://${access.teamDomain}`,
      audience: access.aud,
      algorithms: ACCESS_ALGORITHMS,
      clockTolerance: 30,
      requiredClaims: ["exp"],
    });
    if (!accessAllowed(payload, access)) {
      return { ok: false, status: 403, error: "this Access identity is not in the allowed emails or service tokens" };
    }
    return { ok: true, payload };
  } catch (err) {
    return { ok: false, status: 401, error: `invalid Access token: ${describeJoseError(err)}` };
  }
}

function describeJoseError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return "expired";
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `claim ${err.claim} is wrong`;
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return "bad signature";
  if (err instanceof joseErrors.JWKSNoMatchingKey) return "signed by an unknown key";
  if (err instanceof joseErrors.JWKSTimeout) return "the Access key set did not answer in time";
  if (err instanceof joseErrors.JWSInvalid || err instanceof joseErrors.JWTInvalid) return "malformed";
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return "algorithm not allowed";
  if (err instanceof joseErrors.JOSEError) return err.code;
  return "cannot verify";
}

/** Decide whether a request to /api/* is authenticated. Never logs a credential. */
export async function authenticate(req: Request, env: Env): Promise<AuthResult> {
  const url = new URL(req.url);
  for (const name of url.searchParams.keys()) {
    if (QUERY_TOKEN_PARAMS.includes(name.toLowerCase())) {
      return {
        ok: false,
        status: 400,
        error:
          `a credential in the query string (?${name}=) is refused: URLs leak into logs and history. ` +
          "Send it as a header: Authorization: Bearer <token>",
      };
    }
  }

  const apiToken = typeof env.API_TOKEN === "string" && env.API_TOKEN ? env.API_TOKEN : null;
  const access = accessSettings(env);
  if (!apiToken && !access) {
    return {
      ok: false,
      status: 503,
      error: "no authentication is configured: set the API_TOKEN secret or Cloudflare Access vars",
    };
  }

  const presented = bearerToken(req.headers.get("Authorization"));
  if (presented && apiToken && (await constantTimeEqual(presented, apiToken))) {
    return { ok: true, via: "bearer" };
  }

  const jwt = req.headers.get("Cf-Access-Jwt-Assertion");
  if (jwt && access) {
    const v = await verifyAccessJwt(jwt, access);
    if (v.ok) {
      const email = typeof v.payload.email === "string" ? v.payload.email : undefined;
      if (email) return { ok: true, via: "access", email };
      const cn = typeof v.payload.common_name === "string" ? v.payload.common_name : undefined;
      return cn ? { ok: true, via: "access", serviceToken: cn } : { ok: true, via: "access" };
    }
    return { ok: false, status: v.status, error: v.error };
  }

  if (presented) return { ok: false, status: 401, error: "wrong bearer token" };
  return {
    ok: false,
    status: 401,
    error: access
      ? "missing credentials: send Authorization: Bearer <token> or come through Cloudflare Access"
      : "missing credentials: send Authorization: Bearer <token>",
  };
}

/** Who an authenticated request is, for flared's audit log (never a credential). */
export function actorOf(result: AuthResult & { ok: true }): string {
  if (result.email) return result.email;
  if (result.serviceToken) return `service-token:${result.serviceToken}`;
  return result.via === "bearer" ? "api-token" : "access";
}

/** Hono middleware for /api/*: authenticated, and nothing that changes state from another site. */
export function requireAuth(): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const result = await authenticate(c.req.raw, c.env);
    if (!result.ok) {
      const headers: Record<string, string> = {};
      if (result.status === 401) headers["WWW-Authenticate"] = 'Bearer realm="hermes-flare"';
      return c.json({ error: result.error }, result.status, headers);
    }
    const crossSite = crossSiteRefusal(c.req.raw);
    if (crossSite) return c.json({ error: crossSite }, 403);
    c.set("actor", actorOf(result));
    await next();
  };
}

/**
 * A browser on another site must not be able to make an Access user's browser
 * change anything (Access authenticates by cookie at the edge). Browsers say
 * where a request comes from; anything that changes state and comes from
 * another origin is refused. Non-browser clients send neither header.
 */
export function crossSiteRefusal(req: Request): string | null {
  if (req.method === "GET" || req.method === "HEAD" || req.method === "OPTIONS") return null;
  const site = req.headers.get("Sec-Fetch-Site");
  if (site && site !== "same-origin" && site !== "none") {
    return `a ${req.method} from another site (Sec-Fetch-Site: ${site}) is refused`;
  }
  const origin = req.headers.get("Origin");
  if (origin === "null") return `a ${req.method} from an opaque origin is refused`;
  if (origin && origin !== new URL(req.url).origin) {
    return `a ${req.method} from ${origin} is refused: only this origin may change state`;
  }
  return null;
}

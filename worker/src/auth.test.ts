import { env } from "cloudflare:test";
import { SignJWT, generateKeyPair, importJWK, type JWTPayload } from "jose";
import { describe, expect, it } from "vitest";
import { ACCESS_AUD, TEAM_DOMAIN } from "../test/access-keys";
import { authenticate, constantTimeEqual } from "./auth";
import type { Env } from "./env";

const E = env as unknown as Env & { TEST_ACCESS_PRIVATE_JWK: string };

async function signed(
  claims: JWTPayload,
  opts: { exp?: string | number; key?: CryptoKey; kid?: string; iss?: string; aud?: string } = {},
) {
  const key = opts.key ?? ((await importJWK(JSON.parse(E.TEST_ACCESS_PRIVATE_JWK), "RS256")) as CryptoKey);
  return new SignJWT({ email: "ops@example.com", ...claims })
    .setProtectedHeader({ alg: "RS256", kid: opts.kid ?? "test-kid-1" })
    .setIssuer(opts.iss ?? `https://${TEAM_DOMAIN}`)
    .setAudience(opts.aud ?? ACCESS_AUD)
    .setIssuedAt()
    .setExpirationTime(opts.exp ?? "5m")
    .sign(key);
}

function req(headers: Record<string, string> = {}, path = "/api/status"): Request {
  return new Request(`https://worker.test${path}`, { headers });
}

describe("bearer token", () => {
  it("admits the right token", async () => {
    expect(await authenticate(req({ Authorization: "Bearer test-api-token" }), E)).toEqual({ ok: true, via: "bearer" });
  });
  it("refuses a wrong token, a prefix of it, and a longer one", async () => {
    for (const t of ["wrong", "test-api-toke", "test-api-token-x"]) {
      const r = await authenticate(req({ Authorization: `Bearer ${t}` }), E);
      expect(r).toMatchObject({ ok: false, status: 401, error: "wrong bearer token" });
    }
  });
  it("refuses a missing header", async () => {
    const r = await authenticate(req(), E);
    expect(r).toMatchObject({ ok: false, status: 401 });
    if (!r.ok) expect(r.error).toMatch(/missing credentials/);
  });
  it("refuses a token in the query string, even the right one, naming the header", async () => {
    for (const p of ["token", "access_token", "API_KEY"]) {
      const r = await authenticate(req({}, `/api/status?${p}=test-api-token`), E);
      expect(r).toMatchObject({ ok: false, status: 400 });
      if (!r.ok) {
        expect(r.error).toContain("Authorization: Bearer");
        expect(r.error).not.toContain("test-api-token");
      }
    }
  });
  it("fails closed when nothing is configured", async () => {
    const bare = { ...E, API_TOKEN: undefined, ACCESS_TEAM_DOMAIN: "", ACCESS_AUD: "" } as Env;
    expect(await authenticate(req({ Authorization: "Bearer anything" }), bare)).toMatchObject({ ok: false, status: 503 });
  });
  it("compares in constant time over equal-length digests", async () => {
    expect(await constantTimeEqual("a", "a")).toBe(true);
    expect(await constantTimeEqual("a", "ab")).toBe(false);
    expect(await constantTimeEqual("", "")).toBe(true);
  });
});

describe("Cloudflare Access JWT", () => {
  it("admits a valid JWT from the team's key set", async () => {
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": await signed({}) }), E);
    expect(r).toEqual({ ok: true, via: "access", email: "ops@example.com" });
  });
  it("refuses a wrong aud", async () => {
    const jwt = await signed({}, { aud: "someone-elses-app" });
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": jwt }), E);
    expect(r).toMatchObject({ ok: false, status: 401, error: "invalid Access token: claim aud is wrong" });
  });
  it("refuses a wrong iss", async () => {
    const jwt = await signed({}, { iss: "https://evil.cloudflareaccess.com" });
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": jwt }), E);
    expect(r).toMatchObject({ ok: false, status: 401, error: "invalid Access token: claim iss is wrong" });
  });
  it("refuses an expired JWT", async () => {
    const jwt = await signed({}, { exp: Math.floor(Date.now() / 1000) - 3600 });
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": jwt }), E);
    expect(r).toMatchObject({ ok: false, status: 401, error: "invalid Access token: expired" });
  });
  it("refuses a JWT signed by another key with the same kid", async () => {
    const { privateKey } = await generateKeyPair("RS256");
    const jwt = await signed({}, { key: privateKey });
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": jwt }), E);
    expect(r).toMatchObject({ ok: false, status: 401, error: "invalid Access token: bad signature" });
  });
  it("refuses a JWT whose kid the team does not publish", async () => {
    const { privateKey } = await generateKeyPair("RS256");
    const jwt = await signed({}, { key: privateKey, kid: "unknown-kid" });
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": jwt }), E);
    expect(r).toMatchObject({ ok: false, status: 401, error: "invalid Access token: signed by an unknown key" });
  });
  it("refuses garbage", async () => {
    for (const junk of ["not.a.jwt", "abc", "a.b.c.d", "eyJhbGciOiJIUzI1NiJ9.e30."]) {
      const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": junk }), E);
      expect(r).toMatchObject({ ok: false, status: 401 });
    }
  });
  it("refuses an unsigned (alg none) or HMAC token", async () => {
    const header = btoa(JSON.stringify({ alg: "none", kid: "test-kid-1" })).replace(/=+$/, "");
    const body = btoa(JSON.stringify({ iss: `https://${TEAM_DOMAIN}`, aud: ACCESS_AUD, exp: 9999999999 })).replace(/=+$/, "");
    const r = await authenticate(req({ "Cf-Access-Jwt-Assertion": `${header}.${body}.x` }), E);
    expect(r).toMatchObject({ ok: false, status: 401 });
  });
  it("applies the email allow-list", async () => {
    const listed = { ...E, ACCESS_ALLOWED_EMAILS: "boss@example.com, OPS@example.com" } as Env;
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": await signed({}) }), listed)).toMatchObject({ ok: true });
    const other = await signed({ email: "intruder@example.com" });
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": other }), listed)).toMatchObject({ ok: false, status: 403 });
  });
  it("admits an Access service token by its common name (its JWT has no email)", async () => {
    const clientId = "0123abcd4567ef89.access";
    const token = await signed({ email: undefined, common_name: clientId, sub: "" });
    const emailsOnly = { ...E, ACCESS_ALLOWED_EMAILS: "ops@example.com" } as Env;
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": token }), emailsOnly)).toMatchObject({ ok: false, status: 403 });
    const both = { ...emailsOnly, ACCESS_ALLOWED_SERVICE_TOKENS: `other.access, ${clientId}` } as Env;
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": token }), both)).toEqual({ ok: true, via: "access", serviceToken: clientId });
    // People still need their email on the list; a service token not listed is refused.
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": await signed({}) }), both)).toMatchObject({ ok: true, email: "ops@example.com" });
    const stranger = await signed({ email: undefined, common_name: "stranger.access" });
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": stranger }), both)).toMatchObject({ ok: false, status: 403 });
    // A person's JWT cannot pass as a service token by also carrying a listed common_name.
    const sneaky = await signed({ email: "intruder@example.com", common_name: clientId });
    expect(await authenticate(req({ "Cf-Access-Jwt-Assertion": sneaky }), both)).toMatchObject({ ok: false, status: 403 });
  });
});

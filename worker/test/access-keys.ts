/**
 * A locally generated Access key set for the auth tests: the Node side of the
 * test run serves its public half at the team's JWKS URL (through Miniflare's
 * outbound service), the tests sign JWTs with the private half.
 */
import { exportJWK, generateKeyPair } from "jose";

export const TEAM_DOMAIN = "test-team.cloudflareaccess.com";
export const ACCESS_AUD = "test-aud-0123456789";

export interface TestKeySet {
  jwks: { keys: object[] };
  privateJwk: object;
}

export async function makeKeySet(): Promise<TestKeySet> {
  const { publicKey, privateKey } = await generateKeyPair("RS256", { extractable: true });
  const pub = { ...(await exportJWK(publicKey)), kid: "test-kid-1", alg: "RS256", use: "sig" };
  const priv = { ...(await exportJWK(privateKey)), kid: "test-kid-1", alg: "RS256" };
  return { jwks: { keys: [pub] }, privateJwk: priv };
}

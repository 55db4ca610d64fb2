/**
 * The real Agent class in workerd, on the compatibility date and flags of the
 * rendered wrangler.toml, with only workerd's container runtime replaced
 * (test/container-double.ts): @cloudflare/containers starts the "container",
 * waits for its port and registers outbound interception through
 * `ctx.exports.ContainerProxy`, exactly as on Cloudflare.
 */
import { env, reset, runInDurableObject, SELF } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { ContainerDouble, withContainer } from "../test/container-double";
import type { TestEnv } from "../test/doubles";
import { Agent, EGRESS_HOSTS } from "./agent";
import { SANDBOX_HOST } from "./agent-env";
import type { Env } from "./env";

const T = env as unknown as TestEnv & { Host: DurableObjectNamespace };
const E = env as unknown as Env;
const AUTH = { Authorization: "Bearer test-api-token" };

function api(path: string, init: RequestInit = {}): Promise<Response> {
  return SELF.fetch(`https://worker.test${path}`, { ...init, headers: { ...AUTH, ...(init.headers ?? {}) } });
}

async function startedToken(group: string): Promise<string> {
  const st = await T.Agent.getByName(group).probe();
  const token = st.envVars?.FLARE_CONTROL_TOKEN;
  if (!token) throw new Error(`group ${group}'s container was never started`);
  return token;
}

beforeEach(async () => {
  await reset();
});

describe("the real Agent in a Durable Object", () => {
  it("sets up its outbound interception (ctx.exports.ContainerProxy) and reaches flared", async () => {
    const res = await api("/api/status?group=default");
    const text = await res.text();
    expect(res.status, text).toBe(200);
    expect(JSON.parse(text)).toMatchObject({ flared: { method: "GET", path: "/status" } });
    const agent = T.Agent.getByName("default");
    expect(await agent.intercepted()).toEqual({ http: [...EGRESS_HOSTS, SANDBOX_HOST].sort(), https: [], all: false });

    // From inside the container, the sandbox host lands in the Worker's own
    // handler, which checks the token the container was started with.
    const token = await startedToken("default");
    const list = await agent.fromContainer(`http://${SANDBOX_HOST}/internal/sandboxes`, { headers: { Authorization: `Bearer ${token}` } });
    expect(list).toEqual({ status: 200, body: JSON.stringify({ sandboxes: [] }) });
    const wrong = await agent.fromContainer(`http://${SANDBOX_HOST}/internal/sandboxes`, { headers: { Authorization: "Bearer guess" } });
    expect(wrong.status).toBe(401);
  });
});

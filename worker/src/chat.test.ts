/**
 * OpenAI-compatible chat through the Worker, in workerd: auth, routing by
 * `model` to the bot's group, the answer streamed through as flared (here the
 * in-memory double of its relay, test/doubles.ts) produces it.
 */
import { env, reset, SELF } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import type { TestEnv } from "../test/doubles";

const T = env as unknown as TestEnv;
const AUTH = { Authorization: "Bearer test-api-token" };

function chat(body: unknown, headers: Record<string, string> = AUTH): Promise<Response> {
  return SELF.fetch("https://worker.test/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

const HELLO = [{ role: "user", content: "hello there" }];

beforeEach(async () => {
  await reset();
});

describe("GET /v1/models", () => {
  it("lists the bots, behind auth, without waking a container", async () => {
    expect((await SELF.fetch("https://worker.test/v1/models")).status).toBe(401);
    const res = await SELF.fetch("https://worker.test/v1/models", { headers: AUTH });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { object: string; data: { id: string; object: string }[] };
    expect(body.object).toBe("list");
    expect(body.data.map((m) => [m.id, m.object])).toEqual([
      ["hermes", "model"],
      ["scout", "model"],
    ]);
    for (const g of ["default", "research"]) expect((await T.Agent.getByName(g).probe()).starts).toBe(0);
  });
});

describe("POST /v1/chat/completions", () => {
  it("goes to the bot its model names, in that bot's group, with the session header both ways", async () => {
    const res = await chat({ model: "scout", messages: HELLO }, { ...AUTH, "X-Hermes-Session-Id": "s-42" });
    expect(res.status).toBe(200);
    expect(res.headers.get("X-Hermes-Session-Id")).toBe("s-42");
    const body = (await res.json()) as { choices: { message: { content: string } }[] };
    expect(body.choices[0]!.message.content).toBe("scout heard: hello there");
    const seen = (await T.Agent.getByName("research").seen()).filter((r) => r.path.endsWith("/chat/completions"));
    expect(seen).toHaveLength(1);
    expect(seen[0]!).toMatchObject({ method: "POST", path: "/bots/scout/chat/completions" });
    // flared gets the container's internal token, never the caller's.
    expect(seen[0]!.authorization).toBe(`Bearer ${await T.Agent.getByName("research").controlToken()}`);
    expect((await T.Agent.getByName("default").probe()).starts).toBe(0);
  });

  it("streams: the first chunk reaches the client before the bot has finished", async () => {
    const agent = T.Agent.getByName("default");
    await agent.holdStreams();
    const res = await chat({ model: "hermes", messages: HELLO, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get("Content-Type")).toContain("text/event-stream");
    const reader = res.body!.getReader();
    const dec = new TextDecoder();
    const first = dec.decode((await reader.read()).value);
    expect(first).toContain('"content":"herme"');
    expect(first).not.toContain("[DONE]");
    await agent.releaseStreams();
    let rest = "";
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += dec.decode(r.value);
    const text = first + rest;
    const pieces = text
      .split("\n")
      .filter((l) => l.startsWith("data: {"))
      .map((l) => (JSON.parse(l.slice(6)) as { choices: { delta: { content?: string } }[] }).choices[0]!.delta.content ?? "");
    expect(pieces.join("")).toBe("hermes heard: hello there");
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
  });

  it("needs the token or Access, and answers errors in OpenAI's shape", async () => {
    const anon = await chat({ model: "hermes", messages: HELLO }, {});
    expect(anon.status).toBe(401);
    const unknown = await chat({ model: "gpt-4o", messages: HELLO });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ error: { message: expect.stringContaining("models are the bots (hermes, scout)"), type: "invalid_request_error" } });
    const missing = await chat({ messages: HELLO });
    expect(missing.status).toBe(400);
    expect(((await missing.json()) as { error: { message: string } }).error.message).toContain("model is required");
    const notJson = await chat("nope");
    expect(notJson.status).toBe(400);
    // flared's own refusal, relayed in the same shape.
    const bad = await chat({ model: "hermes", messages: "hi" });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toEqual({ error: { message: "messages is required (a list)", type: "invalid_request_error", code: 400 } });
  });

  it("an Agent that cannot start is a server_error with Retry-After", async () => {
    await T.Agent.getByName("default").setStartFault("container failed to start (test fault)");
    const res = await chat({ model: "hermes", messages: HELLO });
    expect(res.status).toBe(503);
    expect(res.headers.get("Retry-After")).toBe("10");
    expect(await res.json()).toMatchObject({ error: { type: "server_error", message: expect.stringContaining("test fault") } });
  });
});

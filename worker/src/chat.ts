/**
 * OpenAI-compatible chat through the Worker: `POST /v1/chat/completions`
 * (streamed or not) and `GET /v1/models`, behind the same Access or bearer
 * token as /api/*. `model` names the bot; the request goes to flared in the
 * bot's group's Agent container (`POST /bots/<bot>/chat/completions`), which
 * relays it to the bot's Hermes API with the key it rendered, and the answer
 * streams back as it comes. Any OpenAI client can then talk to the agent on
 * Cloudflare without Slack.
 *
 * Errors are OpenAI-shaped (`{"error": {"message", "type", "code"}}`) so
 * clients show them.
 */
import type { Context } from "hono";
import { COLD_START_TIMEOUT_MS, GROUP_HEADER } from "./agent";
import type { AppEnv } from "./env";
import { ACTOR_HEADER, botGroups, RouteError } from "./routes";

type C = Context<AppEnv>;

/** Hermes' session header: continues a conversation, both ways. */
export const SESSION_HEADER = "X-Hermes-Session-Id";
/** Until the answer starts: a cold start, then as long as flared waits for the bot's API. */
export const CHAT_HEADERS_TIMEOUT_MS = COLD_START_TIMEOUT_MS + 600_000;

export function openAIError(status: number, message: string): Response {
  const type = status === 401 || status === 403 ? "authentication_error" : status < 500 ? "invalid_request_error" : "server_error";
  return Response.json({ error: { message, type, code: status } }, { status });
}

/** The bots as models: answered by the Worker alone, no container is woken. */
export function listModels(c: C): Response {
  const data = Object.keys(botGroups(c.env))
    .sort()
    .map((bot) => ({ id: bot, object: "model", created: 0, owned_by: "hermes-flare" }));
  return Response.json({ object: "list", data });
}

/** The bot a request names; with one bot, `model` may be left out. */
export function chosenBot(groups: Record<string, string>, model: unknown): string {
  const bots = Object.keys(groups).sort();
  if ((model === undefined || model === null || model === "") && bots.length === 1) return bots[0]!;
  if (typeof model !== "string" || !model) throw new RouteError(400, `model is required: the bot's name (${bots.join(", ")})`);
  if (!(model in groups)) throw new RouteError(404, `no bot named ${JSON.stringify(model)}: models are the bots (${bots.join(", ")})`);
  return model;
}

/** flared's own errors (`{"error": "text"}`) in OpenAI's shape; Hermes' already are. */
async function asOpenAIError(res: Response): Promise<Response> {
  const text = await res.text();
  try {
    const body = JSON.parse(text) as { error?: unknown };
    if (typeof body.error === "string") {
      const out = openAIError(res.status, body.error);
      const retry = res.headers.get("Retry-After");
      if (retry) out.headers.set("Retry-After", retry);
      return out;
    }
  } catch {
    // not JSON: keep the text
  }
  return new Response(text, { status: res.status, headers: { "Content-Type": res.headers.get("Content-Type") ?? "text/plain" } });
}

export async function chatCompletions(c: C): Promise<Response> {
  const raw = await c.req.text();
  let body: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(raw);
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error();
    body = parsed as Record<string, unknown>;
  } catch {
    throw new RouteError(400, "the request body must be a JSON object");
  }
  const groups = botGroups(c.env);
  const bot = chosenBot(groups, body.model);
  const group = groups[bot]!;
  const headers: Record<string, string> = { [GROUP_HEADER]: group, "Content-Type": "application/json", [ACTOR_HEADER]: c.get("actor") };
  const session = c.req.header(SESSION_HEADER);
  if (session) headers[SESSION_HEADER] = session;

  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), CHAT_HEADERS_TIMEOUT_MS);
  let res: Response;
  try {
    res = await c.env.Agent.getByName(group).fetch(`http://agent/bots/${encodeURIComponent(bot)}/chat/completions`, {
      method: "POST",
      headers,
      body: raw,
      signal: abort.signal,
    });
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new RouteError(abort.signal.aborted ? 504 : 503, `the Agent container of group ${group}: ${msg.slice(0, 200)}`);
  } finally {
    clearTimeout(timer);
  }
  if (!res.ok) return asOpenAIError(res);
  const out = new Headers({ "Content-Type": res.headers.get("Content-Type") ?? "application/json", "Cache-Control": "no-cache" });
  const sid = res.headers.get(SESSION_HEADER);
  if (sid) out.set(SESSION_HEADER, sid);
  return new Response(res.body, { status: res.status, headers: out });
}

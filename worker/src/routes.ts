/**
 * The Worker's HTTP surface: /health (no auth, never wakes a container) and
 * /api/*, authenticated, proxied to flared's control API in the Agent
 * container of the right bot group.
 *
 * Routes about one bot go to that bot's group. Routes about the deployment
 * (status, config, a snapshot of every bot) go to one group with `?group=G`,
 * otherwise to every group, answered as `{"groups": {G: answer}}`.
 */
import { Hono, type Context } from "hono";
import { serveAdmin } from "./admin";
import { COLD_START_TIMEOUT_MS, GROUP_HEADER } from "./agent";
import { requireAuth } from "./auth";
import { chatCompletions, listModels, openAIError } from "./chat";
import type { AppEnv, Env } from "./env";

type C = Context<AppEnv>;

/** Who asked, for flared's audit log; flared trusts it only from the Worker (internal token). */
export const ACTOR_HEADER = "X-Flare-Actor";

/** How long a running flared may take to answer a proxied request. */
export const FLARED_ANSWER_MS = 30_000;
/** A proxied request's whole budget: a cold start of the container, then flared's answer. */
export const PROXY_TIMEOUT_MS = COLD_START_TIMEOUT_MS + FLARED_ANSWER_MS;

export class RouteError extends Error {
  constructor(
    readonly status: 400 | 404 | 502 | 503 | 504,
    message: string,
  ) {
    super(message);
  }
}

/** bot -> group, from the BOT_GROUPS var rendered from the YAML. */
export function botGroups(env: Env): Record<string, string> {
  try {
    const parsed: unknown = JSON.parse(env.BOT_GROUPS || "{}");
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      return Object.fromEntries(Object.entries(parsed).filter(([, g]) => typeof g === "string")) as Record<string, string>;
    }
  } catch {
    // fall through
  }
  throw new RouteError(503, "BOT_GROUPS is not valid JSON: re-render wrangler.toml with `flared render wrangler`");
}

/** Every group, sorted; `default` when the YAML has no bots yet. */
export function allGroups(env: Env): string[] {
  const groups = [...new Set(Object.values(botGroups(env)))].sort();
  return groups.length ? groups : ["default"];
}

export function groupOfBot(env: Env, bot: string): string {
  const g = botGroups(env)[bot];
  if (!g) throw new RouteError(404, `no bot named ${JSON.stringify(bot)} in this deployment`);
  return g;
}

function checkGroup(env: Env, group: string): string {
  if (!allGroups(env).includes(group)) throw new RouteError(404, `no bot group named ${JSON.stringify(group)}`);
  return group;
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new RouteError(504, `${what} did not answer within ${ms / 1000}s`)), ms);
  });
  return Promise.race([p, t]).finally(() => {
    if (timer !== undefined) clearTimeout(timer);
  });
}

/** One request to flared in `group`'s Agent container (started if needed). */
export async function callAgent(
  env: Env,
  group: string,
  method: string,
  pathAndQuery: string,
  body?: string,
  timeoutMs = PROXY_TIMEOUT_MS,
  contentType = "application/json",
  actor?: string,
): Promise<Response> {
  const headers: Record<string, string> = { [GROUP_HEADER]: group, Accept: "application/json" };
  if (actor) headers[ACTOR_HEADER] = actor;
  const init: RequestInit = { method, headers };
  if (body !== undefined) {
    init.body = body;
    headers["Content-Type"] = contentType;
  }
  const stub = env.Agent.getByName(group);
  try {
    return await withTimeout(stub.fetch(`http://agent${pathAndQuery}`, init), timeoutMs, `flared in group ${group}`);
  } catch (err) {
    if (err instanceof RouteError) throw err;
    const msg = err instanceof Error ? err.message : String(err);
    throw new RouteError(503, `the Agent container of group ${group} is not reachable: ${msg.slice(0, 200)}`);
  }
}

/** flared's answer as the client's, keeping its status, JSON body and any Retry-After. */
async function relay(res: Response): Promise<Response> {
  const text = await res.text();
  const headers: Record<string, string> = { "Content-Type": res.headers.get("Content-Type") ?? "application/json" };
  const retry = res.headers.get("Retry-After");
  if (retry) headers["Retry-After"] = retry;
  return new Response(text, { status: res.status, headers });
}

async function proxyToGroup(c: C, group: string, path: string, body?: string): Promise<Response> {
  const url = new URL(c.req.url);
  return relay(
    await callAgent(c.env, group, c.req.method, `${path}${url.search}`, body, PROXY_TIMEOUT_MS, undefined, c.get("actor")),
  );
}

/** Fan a request out to every group (or the one named by `?group=`). */
async function fanOut(c: C, path: string, body?: string): Promise<Response> {
  const url = new URL(c.req.url);
  const only = url.searchParams.get("group");
  if (only) return proxyToGroup(c, checkGroup(c.env, only), path, body);
  const groups = allGroups(c.env);
  const answers = await Promise.all(
    groups.map(async (g) => {
      try {
        const res = await callAgent(
          c.env, g, c.req.method, `${path}${url.search}`, body, PROXY_TIMEOUT_MS, undefined, c.get("actor"),
        );
        const text = await res.text();
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          // Keep the text: it says what went wrong (never replace it with a generic note).
          parsed = { error: `group ${g} answered ${res.status}: ${text.trim().slice(0, 1000) || "(empty body)"}` };
        }
        return [g, res.ok, parsed] as const;
      } catch (err) {
        return [g, false, { error: err instanceof Error ? err.message : String(err) }] as const;
      }
    }),
  );
  const ok = answers.every(([, good]) => good);
  return c.json({ groups: Object.fromEntries(answers.map(([g, , body]) => [g, body])) }, ok ? 200 : 502);
}

/**
 * The version check of a rollout: a group whose flared is not the version
 * this Worker was rendered with (FLARED_VERSION) runs an image from another
 * deploy. Present only when flared reports a version.
 */
export function versionMismatch(env: Env, status: unknown): { worker_expects: string; container_runs: string } | null {
  const want = env.FLARED_VERSION;
  const flared = (status as { flared?: { version?: unknown } } | null)?.flared;
  const got = flared?.version;
  if (!want || typeof got !== "string" || got === want) return null;
  return { worker_expects: want, container_runs: got };
}

/** /api/status with `version_mismatch` on each group's answer whose flared reports a version. */
async function statusWithVersions(c: C): Promise<Response> {
  const single = Boolean(c.req.query("group"));
  const res = await fanOut(c, "/status");
  const text = await res.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    return new Response(text, res);
  }
  const flag = (status: unknown): void => {
    if (typeof status !== "object" || status === null || !("flared" in status)) return;
    const v = (status as { flared?: { version?: unknown } }).flared?.version;
    if (typeof v === "string") (status as Record<string, unknown>).version_mismatch = versionMismatch(c.env, status);
  };
  if (single) flag(body);
  else for (const status of Object.values((body.groups ?? {}) as Record<string, unknown>)) flag(status);
  return new Response(JSON.stringify(body), { status: res.status, headers: res.headers });
}

async function jsonBody(c: C): Promise<Record<string, unknown>> {
  const text = await c.req.text();
  if (!text.trim()) return {};
  try {
    const v: unknown = JSON.parse(text);
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw new RouteError(400, "request body must be a JSON object");
}

function botParam(v: unknown, required: boolean): string | null {
  if (v === undefined || v === null || v === "") {
    if (required) throw new RouteError(400, "bot is required");
    return null;
  }
  if (typeof v !== "string") throw new RouteError(400, "bot must be a string");
  return v;
}

export function buildApp(): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  // Never touches a container: a load balancer or uptime check must not wake one.
  app.get("/health", (c) => c.json({ ok: true }));

  app.use("/api/*", requireAuth());

  app.get("/api/status", statusWithVersions);
  app.get("/api/config", (c) => fanOut(c, "/config"));

  app.get("/api/snapshots", (c) => {
    const bot = botParam(c.req.query("bot"), false);
    return bot ? proxyToGroup(c, groupOfBot(c.env, bot), "/snapshots") : fanOut(c, "/snapshots");
  });
  app.post("/api/snapshots", async (c) => {
    const body = await jsonBody(c);
    const bot = botParam(body.bot, false);
    const text = JSON.stringify({ ...body, bot });
    return bot ? proxyToGroup(c, groupOfBot(c.env, bot), "/snapshots", text) : fanOut(c, "/snapshots", text);
  });
  app.post("/api/restore", async (c) => {
    const body = await jsonBody(c);
    const bot = botParam(body.bot, true) as string;
    return proxyToGroup(c, groupOfBot(c.env, bot), "/restore", JSON.stringify(body));
  });
  app.get("/api/snapshots/history", (c) => {
    const bot = botParam(c.req.query("bot"), false);
    return bot ? proxyToGroup(c, groupOfBot(c.env, bot), "/snapshots/history") : fanOut(c, "/snapshots/history");
  });
  app.get("/api/progress", (c) => {
    const bot = botParam(c.req.query("bot"), true) as string;
    return proxyToGroup(c, groupOfBot(c.env, bot), "/progress");
  });
  app.get("/api/leases", (c) => fanOut(c, "/leases"));
  app.post("/api/reload", (c) => fanOut(c, "/reload", ""));
  app.get("/api/logs", (c) => {
    // A bot's gateway log goes to its group; flared's and supervisord's (?source=) to ?group= or the first.
    const bot = botParam(c.req.query("bot"), !c.req.query("source"));
    const group = bot ? groupOfBot(c.env, bot) : checkGroup(c.env, c.req.query("group") || allGroups(c.env)[0]!);
    return proxyToGroup(c, group, "/logs");
  });
  app.post("/api/bots/:name/restart", (c) => {
    const bot = c.req.param("name");
    return proxyToGroup(c, groupOfBot(c.env, bot), `/bots/${encodeURIComponent(bot)}/restart`, "");
  });

  // Stop a group's Agent container; the next request or cron tick starts a
  // new one. For changes flared refuses to apply live (409 from PUT /config)
  // and for new secrets. flared takes its shutdown snapshots on the way down.
  app.post("/api/containers/:group/restart", async (c) => {
    const group = checkGroup(c.env, c.req.param("group"));
    const result = await c.env.Agent.getByName(group).restart();
    return c.json({ group, ...result });
  });

  // OpenAI-compatible chat with the bots (model = bot), behind the same auth.
  app.use("/v1/*", requireAuth());
  app.get("/v1/models", (c) => listModels(c));
  app.post("/v1/chat/completions", chatCompletions);

  // The admin page (its files only; every call it makes goes through /api/* above).
  app.get("/admin", serveAdmin);
  app.get("/admin/*", serveAdmin);

  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${new URL(c.req.url).pathname}` }, 404));
  app.onError((err, c) => {
    if (err instanceof RouteError && new URL(c.req.url).pathname.startsWith("/v1/")) return openAIError(err.status, err.message);
    if (err instanceof RouteError) return c.json({ error: err.message }, err.status);
    console.error("unhandled error", err instanceof Error ? err.message : String(err));
    return c.json({ error: "internal error" }, 500);
  });
  return app;
}

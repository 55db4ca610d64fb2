/** Worker entry: HTTP routes and the cron trigger; exports the Durable Object classes. */
import type { Env } from "./env";
import { buildApp } from "./routes";
import { runScheduled } from "./scheduled";

export { ContainerProxy } from "@cloudflare/containers";
export { Agent } from "./agent";
export { Exec } from "./sandboxes";
export { SandboxRegistry } from "./registry";

const app = buildApp();

export default {
  fetch: (request, env, ctx) => app.fetch(request, env, ctx),
  async scheduled(_controller, env, _ctx) {
    await runScheduled(env);
  },
} satisfies ExportedHandler<Env>;

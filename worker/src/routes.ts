/** The Worker's HTTP surface: /health, and /api/* proxied to flared. */
import { Hono } from "hono";
import type { Env } from "./env";

export function buildApp(): Hono<{ Bindings: Env }> {
  const app = new Hono<{ Bindings: Env }>();

  // Never touches a container: a load balancer or uptime check must not wake one.
  app.get("/health", (c) => c.json({ ok: true }));

  return app;
}

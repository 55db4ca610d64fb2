/**
 * The test Worker: the real fetch/scheduled handlers, Registry and Agent
 * class, with the Agent's container replaced at the workerd boundary
 * (test/container-double.ts) and the Exec sandbox by a test double
 * (workerd cannot run containers without Docker and Cloudflare's sidecar).
 */
export { default } from "../src/index";
export { ContainerProxy } from "@cloudflare/containers";
export { SandboxRegistry } from "../src/registry";
export { Agent, FakeExec as Exec } from "./doubles";
export { Host } from "./host";

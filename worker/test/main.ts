/**
 * The test Worker: the real fetch/scheduled handlers and Registry, with the
 * container classes (Agent, Exec) replaced by test doubles at the Durable
 * Object boundary (workerd cannot run containers without Docker).
 */
export { default } from "../src/index";
export { SandboxRegistry } from "../src/registry";
export { FakeAgent as Agent, FakeExec as Exec } from "./doubles";

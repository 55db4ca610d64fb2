/**
 * Print the environment the Worker starts an Agent container with, as JSON:
 * the real agentEnvVars() run under Node (type stripping, no bundling). The
 * image tests (tests/test_agent_image.py) boot the Agent image with exactly
 * this, so a change to what the Worker passes is tested against the image.
 *
 * stdin: {"env": {Worker vars and secrets}, "group": G, "token": T, "yaml": TEXT}
 * stdout: {"NAME": "value", ...}
 */
import { agentEnvVars, type AgentEnvSource } from "../src/agent-env.ts";

interface Input {
  env: Record<string, string>;
  group: string;
  token: string;
  yaml: string;
}

const chunks: Buffer[] = [];
for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Input;
process.stdout.write(JSON.stringify(agentEnvVars(input.env as unknown as AgentEnvSource, input.group, input.token, input.yaml)));

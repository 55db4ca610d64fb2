/** The YAML is bundled as a text module (wrangler `rules`, and a plugin in vitest.config.ts). */
declare module "*.yaml" {
  const text: string;
  export default text;
}

/** Vite's import.meta.glob, which the tests use to load the shared contract fixtures. */
interface ImportMeta {
  glob<T = unknown>(pattern: string, options: { eager: true; import: "default" }): Record<string, T>;
}

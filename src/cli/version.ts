/** The release, as package.json names it (test/cli/hardening.test.ts keeps the two equal). */
export const VERSION = '0.1.0';

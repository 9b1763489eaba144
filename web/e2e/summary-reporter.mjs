// node:test reporter that prints only the closing line "N passed, N failed"
// (used beside the spec reporter by cargo xtask test-browser).
export default async function* summaryReporter(source) {
  let passed = 0;
  let failed = 0;
  for await (const event of source) {
    if (event.data?.details?.type === "suite") continue;
    if (event.type === "test:pass" && !event.data.skip && !event.data.todo) passed += 1;
    if (event.type === "test:fail") failed += 1;
  }
  yield `${passed} passed, ${failed} failed\n`;
}

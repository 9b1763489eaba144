// End-to-end tests: the built page in headless Chromium (Debian's, driven by
// playwright-core) against a real edge gateway and user-service.
// Started by cargo xtask test-browser, which provides:
//   GATEWAY_URL          the gateway, which also serves web/dist at /
//   ALLOWED_ORIGIN_URL   a second static server for web/dist, in the gateway's CORS allow-list
//   REFUSED_ORIGIN_URL   a third one, not in the allow-list
//   USER_SERVICE_PID     the user-service process (stopped by the last test)
//   ARTIFACT_DIR         where screenshots are kept
//   CHROMIUM             the browser binary (default /usr/bin/chromium)

import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run cargo xtask test-browser`);
  return value.replace(/\/$/, "");
}

const gateway = required("GATEWAY_URL");
const allowedOrigin = required("ALLOWED_ORIGIN_URL");
const refusedOrigin = required("REFUSED_ORIGIN_URL");
const artifactDir = required("ARTIFACT_DIR");
const userServicePid = Number(required("USER_SERVICE_PID"));
const runId = Date.now().toString(36);

const PROTOCOLS = [
  { value: "rest", label: "REST", path: /\/v1\/users/, contentType: /^application\/json/ },
  {
    value: "grpc-web",
    label: "gRPC-web binary",
    path: /\/user\.UserService\//,
    contentType: /^application\/grpc-web\+proto/,
  },
  {
    value: "grpc-web-text",
    label: "gRPC-web text",
    path: /\/user\.UserService\//,
    contentType: /^application\/grpc-web-text/,
  },
];

let context;
let profileDir;
const consoleLines = [];

before(async () => {
  mkdirSync(artifactDir, { recursive: true });
  profileDir = mkdtempSync(join(tmpdir(), "meshgate-chromium-"));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1100, height: 900 },
  });
  context.setDefaultTimeout(15_000);
});

after(async () => {
  await context?.close();
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
});

async function openPage(origin, { api } = {}) {
  const page = await context.newPage();
  page.on("console", (message) => consoleLines.push(message.text()));
  const url = api ? `${origin}/?api=${encodeURIComponent(api)}` : `${origin}/`;
  await page.goto(url);
  await idle(page);
  return page;
}

async function idle(page) {
  await page.waitForSelector('body[data-busy="false"]');
}

async function choose(page, protocol) {
  await page.selectOption("#protocol", protocol);
  await idle(page);
}

async function fillUser(page, { name, email, age }) {
  await page.fill("#name", name);
  await page.fill("#email", email);
  await page.fill("#age", String(age));
}

function row(page, email) {
  return page.locator("#user-rows tr", { has: page.locator("td.email", { hasText: email }) });
}

async function expectStatus(page, text) {
  await page.locator("#status", { hasText: text }).waitFor();
}

async function expectError(page, text) {
  await page.locator("#error", { hasText: text }).waitFor();
}

/** Submits the form and returns the response of the API call it made. */
async function submitAndCapture(page, protocol) {
  const [response] = await Promise.all([
    page.waitForResponse(
      (r) => protocol.path.test(new URL(r.url()).pathname) && ["POST", "PUT"].includes(r.request().method()),
    ),
    page.click("#save"),
  ]);
  return response;
}

function isAlive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if it is still there after 5 s; resolves once it is gone. */
async function stopProcess(pid) {
  process.kill(pid, "SIGTERM");
  for (let waited = 0; isAlive(pid); waited += 100) {
    if (waited === 5_000) process.kill(pid, "SIGKILL");
    if (waited > 10_000) throw new Error(`process ${pid} did not stop`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function restGetUser(id) {
  return fetch(`${gateway}/v1/users/${encodeURIComponent(id)}`);
}

test("the gateway serves the page and it lists users", async () => {
  const page = await openPage(gateway);
  assert.equal(await page.title(), "meshgate users");
  assert.equal(await page.textContent("#api-base"), gateway);
  await page.locator("#page-info", { hasText: /Page 1 of \d+/ }).waitFor();
  assert.equal(await page.locator("#error").isHidden(), true, await page.textContent("#error"));
  await page.close();
});

for (const protocol of PROTOCOLS) {
  test(`create, edit and delete a user through ${protocol.label}`, async () => {
    const page = await openPage(gateway);
    await choose(page, protocol.value);
    const email = `ada.${protocol.value}.${runId}@example.com`;

    await fillUser(page, { name: `Ada ${protocol.label}`, email, age: 36 });
    const created = await submitAndCapture(page, protocol);
    assert.match(created.request().headers()["content-type"] ?? "", protocol.contentType);
    assert.match(created.headers()["content-type"] ?? "", protocol.contentType);
    if (protocol.value === "rest") assert.equal(created.status(), 201);
    await expectStatus(page, `Created Ada ${protocol.label}`);
    await row(page, email).waitFor();
    const id = await row(page, email).getAttribute("data-user-id");
    assert.ok(id, "the new row carries the user id");

    await row(page, email).locator("button.edit").click();
    assert.equal(await page.inputValue("#email"), email);
    await fillUser(page, { name: `Ada Lovelace ${protocol.label}`, email, age: 37 });
    await submitAndCapture(page, protocol);
    await expectStatus(page, `Updated Ada Lovelace ${protocol.label}`);
    assert.equal(await row(page, email).locator("td.age").textContent(), "37");
    // Read back through REST, independent of the protocol under test.
    const stored = await (await restGetUser(id)).json();
    // The shipped contract: the user itself, snake_case, Unix seconds as numbers.
    assert.equal(stored.name, `Ada Lovelace ${protocol.label}`);
    assert.equal(stored.age, 37);
    assert.equal(typeof stored.created_at, "number");

    await row(page, email).locator("button.delete").click();
    await expectStatus(page, `Deleted Ada Lovelace ${protocol.label}`);
    await row(page, email).waitFor({ state: "detached" });
    assert.equal((await restGetUser(id)).status, 404);
    await page.close();
  });
}

for (const protocol of PROTOCOLS) {
  test(`duplicate email (409) and invalid fields (REST 422, gRPC-web INVALID_ARGUMENT) are shown through ${protocol.label}`, async () => {
    const page = await openPage(gateway);
    await choose(page, protocol.value);
    const email = `grace.${protocol.value}.${runId}@example.com`;
    await fillUser(page, { name: "Grace Hopper", email, age: 85 });
    await page.click("#save");
    await expectStatus(page, "Created Grace Hopper");

    await fillUser(page, { name: "Grace Again", email, age: 40 });
    await page.click("#save");
    await expectError(page, "already exists");
    assert.match(await page.textContent("#error-codes"), /HTTP 409 · ALREADY_EXISTS/);

    await fillUser(page, { name: "", email: "not-an-email", age: -3 });
    await page.click("#save");
    await expectError(page, "Please correct the highlighted fields");
    // REST answers validation failures with the facade's 422; gRPC-web carries INVALID_ARGUMENT.
    const invalidStatus = protocol.value === "rest" ? "422" : "400";
    assert.match(await page.textContent("#error-codes"), new RegExp(`HTTP ${invalidStatus} · INVALID_ARGUMENT`));
    for (const field of ["name", "email", "age"]) {
      assert.notEqual((await page.textContent(`#${field}-error`)).trim(), "", `${field} has a message`);
      assert.equal(await page.getAttribute(`#${field}`, "aria-invalid"), "true");
    }
    if (protocol.value === "rest") {
      await page.screenshot({ path: join(artifactDir, "validation-error.png"), fullPage: true });
    }
    await row(page, email).locator("button.delete").click();
    await expectStatus(page, "Deleted Grace Hopper");
    await page.close();
  });
}

for (const protocol of PROTOCOLS) {
  test(`rate limiting (429) and an unavailable service (503) are explained through ${protocol.label}`, async () => {
    const page = await openPage(gateway);
    await choose(page, protocol.value);
    await page.locator("#diagnostics summary").click();
    await page.selectOption("#simulate-status", "429");
    await page.click("#simulate");
    await expectError(page, "rate limited");
    assert.match(await page.textContent("#error-codes"), /HTTP 429 · RESOURCE_EXHAUSTED/);
    await page.selectOption("#simulate-status", "503");
    await page.click("#simulate");
    await expectError(page, "unavailable");
    assert.match(await page.textContent("#error-codes"), /HTTP 503 · UNAVAILABLE/);
    await page.close();
  });
}

test("a page on an allowed second origin calls the gateway (CORS) through every protocol", async () => {
  const page = await openPage(allowedOrigin, { api: gateway });
  assert.equal(await page.textContent("#api-base"), gateway);
  // The live stream too (EventSource sends no custom headers: a simple CORS request).
  await page.locator('#live-state[data-state="live"]').waitFor();
  const email = `cors.${runId}@example.com`;
  for (const protocol of PROTOCOLS) {
    await choose(page, protocol.value);
    assert.equal(await page.locator("#error").isHidden(), true, await page.textContent("#error"));
    const address = `${protocol.value}.${email}`;
    await fillUser(page, { name: `Cross ${protocol.label}`, email: address, age: 30 });
    const response = await submitAndCapture(page, protocol);
    assert.equal(response.headers()["access-control-allow-origin"], allowedOrigin);
    await expectStatus(page, `Created Cross ${protocol.label}`);
    await row(page, address).locator("button.delete").click();
    await expectStatus(page, `Deleted Cross ${protocol.label}`);
  }
  // Error details must be readable cross-origin too (exposed headers / Status body).
  await choose(page, "grpc-web");
  await fillUser(page, { name: "", email: "nope", age: 20 });
  await page.click("#save");
  await expectError(page, "Please correct the highlighted fields");
  assert.notEqual((await page.textContent("#email-error")).trim(), "");
  await page.screenshot({ path: join(artifactDir, "cross-origin-allowed.png"), fullPage: true });
  await page.close();
});

test("a page on an origin outside the allow-list is refused by CORS", async () => {
  const page = await openPage(refusedOrigin, { api: gateway });
  await expectError(page, "Could not reach the API");
  const direct = await page.evaluate(async (url) => {
    try {
      await fetch(`${url}/v1/users`);
      return "allowed";
    } catch (error) {
      return `refused: ${error}`;
    }
  }, gateway);
  assert.match(direct, /^refused: TypeError/);
  await choose(page, "grpc-web");
  await expectError(page, "Could not reach the API");
  assert.ok(
    consoleLines.some((line) => line.includes(refusedOrigin) && /CORS policy/.test(line)),
    "Chromium logged the CORS refusal",
  );
  await page.screenshot({ path: join(artifactDir, "cross-origin-refused.png"), fullPage: true });
  await page.close();
});

test("a second page shows another client's changes live (WatchUsers as Server-Sent Events)", async () => {
  const watcher = await openPage(gateway);
  await watcher.locator('#live-state[data-state="live"]').waitFor();
  const writer = await openPage(gateway);
  const email = `live.${runId}@example.com`;
  await fillUser(writer, { name: "Live Lovelace", email, age: 36 });
  await writer.click("#save");
  await expectStatus(writer, "Created Live Lovelace");
  // No click on the watching page: the event arrives and the table follows.
  await watcher.locator("#live-log li", { hasText: "created Live Lovelace (v1)" }).waitFor();
  await row(watcher, email).waitFor();
  const id = await row(watcher, email).getAttribute("data-user-id");
  await row(writer, email).locator("button.edit").click();
  await fillUser(writer, { name: "Live King", email, age: 37 });
  await writer.click("#save");
  await expectStatus(writer, "Updated Live King");
  await watcher.locator("#live-log li", { hasText: "updated Live King (v2)" }).waitFor();
  await row(watcher, email).locator("td.name", { hasText: "Live King" }).waitFor();
  await watcher.screenshot({ path: join(artifactDir, "live-changes.png"), fullPage: true });
  await writer.close();
  // A client that is no page at all: a REST delete from here.
  const deleted = await fetch(`${gateway}/v1/users/${encodeURIComponent(id)}`, { method: "DELETE" });
  assert.ok(deleted.ok, `${deleted.status} ${await deleted.text()}`);
  await watcher.locator(`#live-log li[data-type="user.deleted"][data-user-id="${id}"]`).waitFor();
  await row(watcher, email).waitFor({ state: "detached" });
  await watcher.close();
});

test("the page with users, for the record (screenshot)", async () => {
  const page = await openPage(gateway);
  const people = [
    ["Ada Lovelace", 36],
    ["Alan Turing", 41],
    ["Grace Hopper", 85],
  ];
  for (const [name, age] of people) {
    const email = `${name.split(" ")[0].toLowerCase()}.shot.${runId}@example.com`;
    await fillUser(page, { name, email, age });
    await page.click("#save");
    await expectStatus(page, `Created ${name}`);
  }
  await page.screenshot({ path: join(artifactDir, "users-page.png"), fullPage: true });
  await page.close();
});

// Last: it stops the user-service for good.
test("a stopped user-service is reported as 503 through REST and gRPC-web", async () => {
  const page = await openPage(gateway);
  await page.locator('#live-state[data-state="live"]').waitFor();
  await stopProcess(userServicePid);
  // The draining service ends the live stream; the page notices and keeps trying.
  await page.locator('#live-state[data-state="reconnecting"]').waitFor();
  for (const protocol of PROTOCOLS) {
    await choose(page, protocol.value);
    await page.click("#refresh");
    await idle(page);
    await expectError(page, "unavailable");
    assert.match(await page.textContent("#error-codes"), /HTTP 503 · UNAVAILABLE/);
  }
  await page.screenshot({ path: join(artifactDir, "service-down.png"), fullPage: true });
  await page.close();
});

// Real-browser test of the tokengate admin page.
//
// Drives the system Chromium (never a downloaded browser) through playwright-core against a running
// gateway's admin listener, as a person would: sign in, create tokens, copy and dismiss the one-time
// secret, rotate, revoke, filter, sign out. Along the way it checks that user data renders as text (an
// HTML-looking label stays literal), that the plaintext leaves the DOM after "Done", that the admin token
// lives in sessionStorage only, and that the page produced no console errors, page errors, CSP violations
// or native dialogs.
//
// Usage:  ADMIN_URL=http://127.0.0.1:9090 ADMIN_TOKEN=tg_... [SCREENSHOT=docs/admin-page.png] node admin_page.mjs
// Optional: CHROMIUM (default /usr/bin/chromium). Needs `npm ci` in this folder first.
// Exit status 0 when every step passed; 1 with "FAIL <step>: <reason>" otherwise.

import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const ADMIN_URL = (process.env.ADMIN_URL || "").replace(/\/+$/, "");
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || "";
/** A `tokens:self` token of user SELF_USER (with scope telemetry:write), for the self-service steps. */
const SELF_TOKEN = process.env.SELF_TOKEN || "";
const SELF_USER = process.env.SELF_USER || "";
/** The user the trusted account header names (the gateway trusts 127.0.0.1 for it). */
const ACCOUNT_USER = process.env.ACCOUNT_USER || "";
const SCREENSHOT = process.env.SCREENSHOT || "";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TOKEN_RE = /^tg_[0-9A-Za-z]{49}$/;
const XSS_LABEL = "<img src=x onerror=alert(1)> hive";
/** Whole-run limit, so a hung browser or server cannot hang CI. */
const OVERALL_TIMEOUT_MS = 120_000;

// ---------------------------------------------------------------------------------------------------------
// Small harness: named steps, assertions, and the record of what the browser reported.
// ---------------------------------------------------------------------------------------------------------

class Failure extends Error {}

function assert(condition, message) {
  if (!condition) throw new Failure(message);
}

let currentStep = "setup";
const passed = [];

async function step(name, fn) {
  currentStep = name;
  await fn();
  passed.push(name);
  console.log(`ok   ${name}`);
}

/** Everything the page reported that a clean run must not have. */
const problems = [];
/**
 * Console errors a step expects (Chromium logs every 4xx answer to fetch as "Failed to load resource");
 * a step that provokes one on purpose lists its pattern here while it runs.
 */
let expectedConsole = [];
/** Native dialogs (alert/confirm/prompt) the page opened: the page uses DOM dialogs only. */
const nativeDialogs = [];

function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Runs `fn` while console errors matching `patterns` are expected (and not counted as problems). */
async function expectingConsole(patterns, fn) {
  expectedConsole = patterns;
  try {
    await fn();
  } finally {
    expectedConsole = [];
  }
}

// ---------------------------------------------------------------------------------------------------------
// Page helpers
// ---------------------------------------------------------------------------------------------------------

/** The rows of the token table as plain objects read from the DOM. */
async function rows(page) {
  return page.$$eval('[data-testid="token-row"]', (trs) =>
    trs.map((tr) => {
      const text = (id) => tr.querySelector(`[data-testid="${id}"]`)?.textContent ?? null;
      return {
        id: Number(tr.dataset.tokenId),
        label: text("label"),
        user: text("user"),
        status: text("status"),
        uses: text("uses"),
        lastUsed: text("last-used"),
        expires: text("expires"),
        expiresTitle: tr.querySelector('[data-testid="expires"] time')?.getAttribute("title") ?? null,
        createdTitle: tr.querySelector('[data-testid="created"] time')?.getAttribute("title") ?? null,
        limits: text("limits"),
        rate: text("rate"),
        quota: text("quota"),
        quotaTitle: tr.querySelector('[data-testid="quota"]')?.getAttribute("title") ?? null,
        scopes: [...tr.querySelectorAll('[data-testid="scope"]')].map((s) => s.textContent),
        groups: [...tr.querySelectorAll('[data-testid="group"]')].map((s) => s.textContent),
        licenses: [...tr.querySelectorAll('[data-testid="license"]')].map((s) => s.textContent),
        actions: [...tr.querySelectorAll("button[data-action]")].map((b) => b.dataset.action),
      };
    }),
  );
}

function row(page, id) {
  return page.locator(`[data-testid="token-row"][data-token-id="${id}"]`);
}

/** Waits until the table shows `predicate(rows)`; fails with the last rows seen. */
async function waitRows(page, predicate, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let seen = [];
  while (Date.now() < deadline) {
    seen = await rows(page);
    if (predicate(seen)) return seen;
    await page.waitForTimeout(50);
  }
  throw new Failure(`${what}; rows shown: ${JSON.stringify(seen, null, 1)}`);
}

/** Fills and submits the create form; returns the plaintext shown in the one-time panel. */
async function createViaForm(page, { user, label, expiry = "", customExpiry = "", scopes = "", rate = "", quota = "" }) {
  await page.fill("#create-user", user);
  await page.fill("#create-label", label);
  await page.selectOption("#create-expiry", expiry);
  if (expiry === "custom") await page.fill("#create-expiry-custom", customExpiry);
  await page.fill("#create-scopes", scopes);
  await page.fill("#create-rate", rate);
  await page.fill("#create-quota", quota);
  await page.click("#create-submit");
  const secret = page.getByTestId("secret-value");
  await secret.waitFor({ state: "visible" });
  return (await secret.textContent()).trim();
}

/** Asserts `secret` occurs exactly `times` times in the serialized DOM. */
async function assertInDom(page, secret, times, why) {
  const html = await page.content();
  const count = html.split(secret).length - 1;
  assert(count === times, `${why}: the plaintext occurs ${count} time(s) in the DOM, expected ${times}`);
}

/** Clicks "Done" on the secret panel and checks the plaintext is gone from the DOM. */
async function dismissSecret(page, secret) {
  await page.getByTestId("secret-done").click();
  await page.getByTestId("secret-panel").waitFor({ state: "detached" });
  await assertInDom(page, secret, 0, 'after "Done"');
}

// ---------------------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------------------

async function run() {
  assert(ADMIN_URL, "ADMIN_URL is not set (e.g. http://127.0.0.1:9090)");
  assert(ADMIN_TOKEN, "ADMIN_TOKEN is not set (a token with the admin scope)");
  assert(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);

  await step("the page is served with a strict Content-Security-Policy", async () => {
    const response = await fetch(`${ADMIN_URL}/`);
    assert(response.status === 200, `GET / answered ${response.status}`);
    const type = response.headers.get("content-type") || "";
    assert(type.startsWith("text/html"), `GET / content-type is "${type}"`);
    const csp = response.headers.get("content-security-policy") || "";
    for (const directive of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "form-action 'none'"]) {
      assert(csp.includes(directive), `CSP lacks "${directive}": "${csp}"`);
    }
    for (const asset of ["/assets/app.js", "/assets/app.css"]) {
      const r = await fetch(`${ADMIN_URL}${asset}`);
      assert(r.status === 200, `GET ${asset} answered ${r.status}`);
    }
  });

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "tokengate-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
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
    viewport: { width: 1280, height: 860 },
    deviceScaleFactor: 1,
    colorScheme: "light",
    // A fixed locale and zone so dates look the same on every machine (and in the screenshot).
    locale: "en-GB",
    timezoneId: "UTC",
  });
  try {
    await exercise(context);
  } finally {
    await context.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

async function exercise(context) {
  const origin = new URL(ADMIN_URL).origin;
  // The Copy button may use the async clipboard; allow it for this origin (the fallback is tested too).
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin }).catch(() => {});

  // Report CSP violations from inside the page (the listener is installed by the browser, not the page,
  // so the CSP does not block it).
  await context.exposeBinding("__reportCspViolation", (_source, v) => {
    problems.push(`CSP violation: ${v.directive} blocked ${v.blocked} (${v.source})`);
  });
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__reportCspViolation({
        directive: e.violatedDirective,
        blocked: e.blockedURI,
        source: `${e.sourceFile}:${e.lineNumber}`,
      });
    });
  });

  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(10_000);
  page.on("console", (msg) => {
    if (msg.type() !== "error") return;
    const text = msg.text();
    if (expectedConsole.some((re) => re.test(text))) return;
    problems.push(`console error during "${currentStep}": ${text}`);
  });
  page.on("pageerror", (err) => problems.push(`page error during "${currentStep}": ${err.message}`));
  page.on("dialog", (dialog) => {
    nativeDialogs.push(`${dialog.type()}: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  const noProblemsYet = (when) =>
    assert(problems.length === 0 && nativeDialogs.length === 0, `${when}: ${[...problems, ...nativeDialogs].join("; ")}`);

  await step("the page loads and asks for the admin token", async () => {
    await page.goto(`${ADMIN_URL}/`);
    await page.locator("#admin-token").waitFor({ state: "visible" });
    assert(await page.locator("#app").isHidden(), "the token list is visible before signing in");
    assert((await page.title()).includes("tokengate"), `title is "${await page.title()}"`);
    const heading = await page.locator("h1").textContent();
    assert(heading.includes("tokengate") && heading.includes("tokens"), `heading is "${heading}"`);
    // Styles came from app.css (a blocked stylesheet would leave [hidden]-less defaults).
    const font = await page.evaluate(() => getComputedStyle(document.body).fontFamily);
    assert(/system-ui|sans-serif/.test(font), `app.css not applied (body font: ${font})`);
    noProblemsYet("after loading the page");
  });

  await step("a wrong admin token gives a readable error and is not kept", async () => {
    await expectingConsole([/status of 401/], async () => {
      await page.fill("#admin-token", "tg_" + "A".repeat(49));
      await page.click("#sign-in");
      const error = page.getByTestId("signin-error");
      await error.waitFor({ state: "visible" });
      const text = (await error.textContent()).trim();
      assert(/not accepted|token/i.test(text) && text.length > 10, `sign-in error reads "${text}"`);
    });
    const stored = await page.evaluate(() => ({ session: sessionStorage.length, local: localStorage.length }));
    assert(stored.session === 0 && stored.local === 0, `a rejected token was stored: ${JSON.stringify(stored)}`);
    assert(await page.locator("#app").isHidden(), "the token list is shown after a rejected sign-in");
  });

  await step("signing in shows the token list; the admin token is in sessionStorage only", async () => {
    await page.fill("#admin-token", ADMIN_TOKEN);
    await page.click("#sign-in");
    await page.locator("#app").waitFor({ state: "visible" });
    await waitRows(page, (r) => r.length >= 1, "the admin token's own row did not appear");
    assert(await page.getByTestId("signin-error").isHidden(), "the sign-in error is still shown");
    const storage = await page.evaluate(() => ({
      session: Object.keys(sessionStorage).map((k) => sessionStorage.getItem(k)),
      local: localStorage.length,
      cookie: document.cookie,
    }));
    assert(storage.session.includes(ADMIN_TOKEN), "the admin token is not in sessionStorage");
    assert(storage.local === 0, "something was written to localStorage");
    assert(storage.cookie === "", `a cookie was set: ${storage.cookie}`);
    const cookies = await context.cookies();
    assert(cookies.length === 0, `the browser holds cookies: ${JSON.stringify(cookies)}`);
    assert((await page.inputValue("#admin-token")) === "", "the admin token is left in the sign-in field");
  });

  await step("a reload keeps the session (sessionStorage)", async () => {
    await page.reload();
    await page.locator("#app").waitFor({ state: "visible" });
    await waitRows(page, (r) => r.length >= 1, "no rows after reload");
  });

  let alice = null;
  let aliceSecret = "";
  await step("creating a token shows its plaintext once; an HTML-like label renders as text", async () => {
    const secret = await createViaForm(page, { user: "alice", label: XSS_LABEL });
    assert(TOKEN_RE.test(secret), `the shown token "${secret}" does not match ${TOKEN_RE}`);
    await assertInDom(page, secret, 1, "after create");
    const warning = await page.getByTestId("secret-panel").textContent();
    assert(/not be shown again/i.test(warning), `the secret panel lacks the warning: "${warning}"`);
    const shown = await waitRows(page, (r) => r.some((x) => x.user === "alice"), "alice's new row is missing");
    alice = shown.find((x) => x.user === "alice");
    assert(alice.label === XSS_LABEL, `label rendered as "${alice.label}", expected the literal "${XSS_LABEL}"`);
    assert(alice.status === "active", `new token's status is "${alice.status}"`);
    assert(alice.lastUsed === "never", `new token's last use reads "${alice.lastUsed}"`);
    assert(alice.expires === "never", `new token's expiry reads "${alice.expires}"`);
    assert(/^\d{4}-\d\d-\d\dT/.test(alice.createdTitle || ""), `created cell has no ISO title: ${alice.createdTitle}`);
    assert(alice.actions.join() === "history,edit,rotate,revoke", `actions of an active token: ${alice.actions}`);
    const injected = await page.evaluate(() => document.querySelectorAll('img[src="x"], img[src$="/x"]').length);
    assert(injected === 0, "the label was parsed as HTML (an <img> element exists)");
    noProblemsYet("after creating the token");
    aliceSecret = secret;
  });

  await step("the Copy button puts the plaintext on the clipboard (or selects it)", async () => {
    await page.getByTestId("secret-copy").click();
    await page.waitForFunction(() => document.querySelector('[data-testid="secret-copied"]')?.textContent);
    const said = await page.getByTestId("secret-copied").textContent();
    if (said.startsWith("Copied")) {
      const clip = await page.evaluate(() => navigator.clipboard.readText()).catch(() => null);
      assert(clip === null || clip === aliceSecret, `the clipboard holds "${clip}"`);
    } else {
      const selected = await page.evaluate(() => String(window.getSelection()));
      assert(selected === aliceSecret, `fallback selected "${selected}"`);
    }
  });

  await step('"Done" removes the plaintext from the DOM', async () => {
    await dismissSecret(page, aliceSecret);
    const a = (await rows(page)).find((x) => x.id === alice.id);
    assert(a && a.status === "active", `alice's row after Done: ${JSON.stringify(a)}`);
  });

  let bob = null;
  let bobSecret = "";
  await step("creating with an expiry and scopes shows both", async () => {
    bobSecret = await createViaForm(page, {
      user: "bob",
      label: "telemetry uplink",
      expiry: "90d",
      scopes: "telemetry:write, video:upload",
    });
    assert(TOKEN_RE.test(bobSecret), `bob's token "${bobSecret}" does not match`);
    await dismissSecret(page, bobSecret);
    const shown = await waitRows(page, (r) => r.some((x) => x.user === "bob"), "bob's row is missing");
    bob = shown.find((x) => x.user === "bob");
    assert(bob.scopes.join() === "telemetry:write,video:upload", `bob's scopes: ${bob.scopes}`);
    assert(bob.expires !== "never" && bob.expiresTitle, `bob's expiry reads "${bob.expires}"`);
    const days = (Date.parse(bob.expiresTitle) - Date.now()) / 86_400_000;
    assert(days > 89 && days < 91, `bob's token expires in ${days.toFixed(2)} days, expected 90`);
  });

  await step("a bad expiry shows the server's explanation; a custom one works", async () => {
    await expectingConsole([/status of 400/], async () => {
      await page.fill("#create-user", "carol");
      await page.fill("#create-label", "video uploads");
      await page.selectOption("#create-expiry", "custom");
      await page.fill("#create-expiry-custom", "soon-ish");
      await page.fill("#create-scopes", "");
      await page.click("#create-submit");
      const error = page.getByTestId("create-error");
      await error.waitFor({ state: "visible" });
      const text = (await error.textContent()).trim();
      assert(text.length > "Could not create the token: ".length, `create error reads "${text}"`);
    });
    assert((await page.getByTestId("secret-panel").count()) === 0, "a secret panel appeared after a failed create");
    await page.fill("#create-expiry-custom", "12h");
    await page.click("#create-submit");
    const secret = (await page.getByTestId("secret-value").textContent()).trim();
    assert(TOKEN_RE.test(secret), `carol's token "${secret}" does not match`);
    assert(await page.getByTestId("create-error").isHidden(), "the create error is still shown after success");
    await dismissSecret(page, secret);
    const carol = (await waitRows(page, (r) => r.some((x) => x.user === "carol"), "carol's row is missing")).find(
      (x) => x.user === "carol",
    );
    const hours = (Date.parse(carol.expiresTitle) - Date.now()) / 3_600_000;
    assert(hours > 11.5 && hours < 12.5, `carol's token expires in ${hours.toFixed(2)} h, expected 12`);
  });

  await step("limits set on create show in the row; editing changes and clears them in place", async () => {
    const secret = await createViaForm(page, { user: "dave", label: "entrance camera", rate: "5/s", quota: "100/day" });
    await dismissSecret(page, secret);
    let dave = (await waitRows(page, (r) => r.some((x) => x.user === "dave"), "dave's row is missing")).find(
      (x) => x.user === "dave",
    );
    assert(dave.rate === "5/s", `dave's rate limit reads "${dave.rate}"`);
    assert(dave.quota === "0 of 100/day", `dave's quota reads "${dave.quota}"`);
    assert(dave.quotaTitle && dave.quotaTitle.startsWith("quota resets "), `quota title: "${dave.quotaTitle}"`);
    const others = (await rows(page)).filter((x) => x.user === "bob");
    assert(others.every((x) => x.limits === "none"), `a token without limits shows: ${JSON.stringify(others)}`);

    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    await row(page, dave.id).getByTestId("edit").click();
    const dialog = page.getByTestId("edit-dialog");
    await dialog.waitFor({ state: "visible" });
    assert((await page.inputValue("#edit-rate")) === "5/s", "the edit dialog does not show the rate limit");
    assert((await page.inputValue("#edit-quota")) === "100/day", "the edit dialog does not show the quota");
    // A bad rate: the server's explanation appears and nothing changes.
    await expectingConsole([/status of 400/], async () => {
      await page.fill("#edit-rate", "lots");
      await page.click("#edit-confirm");
      const error = page.getByTestId("edit-error");
      await error.waitFor({ state: "visible" });
      const text = (await error.textContent()).trim();
      assert(text.includes("lots"), `edit error does not explain the bad rate: "${text}"`);
    });
    assert(await dialog.isVisible(), "the edit dialog closed after an error");
    // Clear the rate, raise the quota, rename.
    await page.fill("#edit-rate", "");
    await page.fill("#edit-quota", "2000/month");
    await page.fill("#edit-label", "entrance camera (east)");
    await page.click("#edit-confirm");
    await dialog.waitFor({ state: "hidden" });
    dave = (
      await waitRows(
        page,
        (r) => r.find((x) => x.id === dave.id)?.quota === "0 of 2000/month",
        "dave's row did not show the new quota",
      )
    ).find((x) => x.id === dave.id);
    assert(dave.rate === null, `the cleared rate limit still shows: "${dave.rate}"`);
    assert(dave.label === "entrance camera (east)", `label after edit: "${dave.label}"`);
    assert(await page.evaluate(() => window.__sameDocument === true), "the page reloaded to show the change");
    // What the page shows is what the API holds.
    const api = await page.evaluate(async ([id, token]) => {
      const r = await fetch(`/api/tokens/${id}`, { headers: { Authorization: `Bearer ${token}` } });
      return r.json();
    }, [dave.id, ADMIN_TOKEN]);
    assert(api.rate_limit === null && api.quota === "2000/month", `the API holds ${JSON.stringify(api)}`);
    assert(
      api.events.map((e) => e.event).join() === "created,updated",
      `dave's history: ${api.events.map((e) => e.event)}`,
    );
  });

  await step("rotating asks for a grace period and shows the new secret once", async () => {
    await row(page, bob.id).getByTestId("rotate").click();
    const dialog = page.getByTestId("rotate-dialog");
    await dialog.waitFor({ state: "visible" });
    const title = await dialog.locator("h2").textContent();
    assert(title.includes("telemetry uplink"), `rotate dialog title: "${title}"`);
    // A bad grace period: the server's explanation appears in the dialog, which stays open.
    await expectingConsole([/status of 400/], async () => {
      await page.fill("#rotate-grace", "forever");
      await page.click("#rotate-confirm");
      const error = page.getByTestId("rotate-error");
      await error.waitFor({ state: "visible" });
      const text = (await error.textContent()).trim();
      assert(text.includes("forever"), `rotate error does not explain the bad grace: "${text}"`);
    });
    assert(await dialog.isVisible(), "the rotate dialog closed after an error");
    assert((await page.getByTestId("secret-panel").count()) === 0, "a secret panel appeared after a failed rotate");
    await page.fill("#rotate-grace", "10m");
    await page.click("#rotate-confirm");
    await dialog.waitFor({ state: "hidden" });
    const secret = (await page.getByTestId("secret-value").textContent()).trim();
    assert(TOKEN_RE.test(secret), `rotated token "${secret}" does not match`);
    assert(secret !== bobSecret, "rotation showed the old secret");
    await assertInDom(page, secret, 1, "after rotate");
    await dismissSecret(page, secret);
    const b = (await rows(page)).find((x) => x.id === bob.id);
    assert(b && b.status === "active", `bob's row after rotation: ${JSON.stringify(b)}`);
  });

  await step("the history dialog lists the token's events", async () => {
    await row(page, bob.id).getByTestId("history").click();
    const dialog = page.getByTestId("history-dialog");
    await dialog.waitFor({ state: "visible" });
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="history-event"]').length >= 2);
    const events = await page.$$eval('[data-testid="history-event"]', (items) => items.map((i) => i.dataset.event));
    assert(events.join() === "created,rotated", `bob's history: ${events}`);
    const text = await dialog.textContent();
    assert(text.includes("telemetry uplink"), `history dialog does not name the token: "${text}"`);
    await page.click("#history-close");
    await dialog.waitFor({ state: "hidden" });
  });

  await step("revoking asks for confirmation naming the label, then marks the row revoked in place", async () => {
    await page.evaluate(() => {
      window.__sameDocument = true; // gone if the page reloads
    });
    // Cancel first: nothing changes.
    await row(page, alice.id).getByTestId("revoke").click();
    const dialog = page.getByTestId("revoke-dialog");
    await dialog.waitFor({ state: "visible" });
    const text = await dialog.textContent();
    assert(text.includes(XSS_LABEL), `the confirmation does not name the label literally: "${text}"`);
    await page.click("#revoke-cancel");
    await dialog.waitFor({ state: "hidden" });
    assert((await rows(page)).find((x) => x.id === alice.id).status === "active", "cancel revoked the token");
    // Then confirm.
    await row(page, alice.id).getByTestId("revoke").click();
    await dialog.waitFor({ state: "visible" });
    await page.click("#revoke-confirm");
    await dialog.waitFor({ state: "hidden" });
    const after = await waitRows(
      page,
      (r) => r.find((x) => x.id === alice.id)?.status === "revoked",
      "alice's row did not turn revoked",
    );
    const a = after.find((x) => x.id === alice.id);
    assert(a.actions.join() === "history", `a revoked token offers ${a.actions}`);
    assert(a.label === XSS_LABEL, `label after revoke: "${a.label}"`);
    assert(await page.evaluate(() => window.__sameDocument === true), "the page reloaded to show the change");
  });

  await step("an admin manages groups and licenses, and the token rows show them", async () => {
    assert(await page.getByTestId("access-section").isVisible(), "no groups and licenses section for an admin");
    const bob = (await rows(page)).find((x) => x.user === "bob");
    assert(bob, "bob's token is not listed");
    await page.fill("#group-name", "apiary-42");
    await page.fill("#group-roles", "");
    await page.getByTestId("group-create").click();
    await page.locator('[data-testid="access-group"][data-name="apiary-42"]').waitFor();
    await page.fill("#license-name", "video-analytics");
    await page.fill("#license-seats", "1");
    await page.fill("#license-until", "2999-01-01T00:00:00Z");
    await page.getByTestId("license-create").click();
    const license = page.locator('[data-testid="access-license"][data-name="video-analytics"]');
    await license.waitFor();
    assert(/0\/1 seats/.test(await license.textContent()), `license summary: ${await license.textContent()}`);
    // bob by user into the group; bob's token by id onto the license.
    await page.selectOption("#member-target", "groups/apiary-42");
    await page.fill("#member-who", "bob");
    await page.getByTestId("member-add").click();
    await waitRows(
      page,
      (r) => r.find((x) => x.id === bob.id)?.groups.join() === "group apiary-42",
      "bob's row does not show the group",
    );
    await page.selectOption("#member-target", "licenses/video-analytics");
    await page.fill("#member-who", `token:${bob.id}`);
    await page.getByTestId("member-add").click();
    await waitRows(
      page,
      (r) => r.find((x) => x.id === bob.id)?.licenses.join() === "license video-analytics",
      "bob's row does not show the license",
    );
    const others = (await rows(page)).filter((x) => x.user !== "bob");
    assert(others.every((x) => x.groups.length === 0 && x.licenses.length === 0), "another user's row shows bob's groups");
    // The last seat is taken: the refusal is shown, nothing changes.
    await expectingConsole([/status of 409/], async () => {
      await page.fill("#member-who", "carol");
      await page.getByTestId("member-add").click();
      const error = page.getByTestId("access-error");
      await error.waitFor({ state: "visible" });
      const text = (await error.textContent()).trim();
      assert(/seats are taken/.test(text), `assign error: "${text}"`);
    });
    // Remove bob from the group: the chip goes.
    await page
      .locator('[data-testid="access-group"][data-name="apiary-42"] [data-testid="access-remove"]')
      .click();
    await waitRows(
      page,
      (r) => r.find((x) => x.id === bob.id)?.groups.length === 0,
      "bob's row still shows the group after the removal",
    );
    assert((await rows(page)).find((x) => x.id === bob.id).licenses.length === 1, "the license went too");
  });

  await step("filtering by user lists only that user's tokens", async () => {
    await page.fill("#filter-user", "alice");
    await page.press("#filter-user", "Enter");
    await waitRows(
      page,
      (r) => r.length === 1 && r[0].user === "alice" && r[0].status === "revoked",
      'filter "alice" should show exactly alice\'s revoked token',
    );
    await page.fill("#filter-user", "bob");
    await page.click("#filter-apply");
    await waitRows(page, (r) => r.length === 1 && r[0].user === "bob", 'filter "bob" should show only bob');
    await page.fill("#filter-user", "nobody-here");
    await page.press("#filter-user", "Enter");
    await waitRows(page, (r) => r.length === 0, 'filter "nobody-here" should show no rows');
    assert(await page.getByTestId("list-empty").isVisible(), "no 'No tokens.' line for an empty list");
    await page.click("#filter-clear");
    await waitRows(
      page,
      (r) => ["ops", "alice", "bob", "carol"].every((u) => r.some((x) => x.user === u)),
      "clearing the filter should list every user's tokens again",
    );
  });

  if (SCREENSHOT) {
    await step(`screenshot saved to ${SCREENSHOT}`, async () => {
      // No focus ring or hover state in the picture.
      await page.evaluate(() => document.activeElement?.blur());
      await page.mouse.move(0, 0);
      fs.mkdirSync(path.dirname(path.resolve(SCREENSHOT)), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    });
  }

  await step("signing out forgets the admin token and clears the list", async () => {
    await page.getByTestId("sign-out").click();
    await page.locator("#admin-token").waitFor({ state: "visible" });
    assert(await page.locator("#app").isHidden(), "the token list is still visible after signing out");
    assert((await page.evaluate(() => sessionStorage.length)) === 0, "sessionStorage still holds something");
    assert((await page.locator('[data-testid="token-row"]').count()) === 0, "token rows remain in the DOM");
    await page.reload();
    await page.locator("#admin-token").waitFor({ state: "visible" });
    assert(await page.locator("#app").isHidden(), "a reload after sign-out signed back in");
  });

  if (SELF_TOKEN) {
    await step("a tokens:self token signs in to its own user's tokens only", async () => {
      await page.fill("#admin-token", SELF_TOKEN);
      await page.click("#sign-in");
      await page.locator("#app").waitFor({ state: "visible" });
      const title = (await page.locator("#list-title").textContent()).trim();
      assert(title === `Tokens of ${SELF_USER}`, `list title "${title}"`);
      assert(await page.locator("#create-user-field").isHidden(), "the user field is shown in self-service");
      assert(await page.locator("#filter-form").isHidden(), "the filter is shown in self-service");
      const shown = await waitRows(page, (r) => r.length > 0, "no rows for the self-service user");
      assert(shown.every((x) => x.user === SELF_USER), `other users' tokens shown: ${JSON.stringify(shown)}`);
    });

    await step("self-service creates for its own user and shows why a grant beyond its own is refused", async () => {
      const secret = await createViaFormSelf(page, { label: "garden scale", scopes: "telemetry:write", expiry: "30d" });
      await dismissSecret(page, secret);
      const rows_ = await waitRows(page, (r) => r.some((x) => x.label === "garden scale"), "the new row is missing");
      assert(rows_.find((x) => x.label === "garden scale").user === SELF_USER);
      await expectingConsole([/status of 403/], async () => {
        await page.fill("#create-label", "sneaky");
        await page.fill("#create-scopes", "admin");
        await page.click("#create-submit");
        const error = page.getByTestId("create-error");
        await error.waitFor({ state: "visible" });
        const text = (await error.textContent()).trim();
        assert(text.includes("admin"), `create error: "${text}"`);
      });
      assert(await page.locator("#app").isVisible(), "a refused grant signed the user out");
      await page.fill("#create-scopes", "");
      await page.getByTestId("sign-out").click();
      await page.locator("#admin-token").waitFor({ state: "visible" });
      const title = (await page.locator("#list-title").textContent()).trim();
      assert(title === "Tokens", `the title stayed "${title}" after sign-out`);
    });
  }

  if (ACCOUNT_USER) {
    await step("behind the platform's account page the page signs in as the account, without a token", async () => {
      const account = await context.newPage();
      account.on("console", (msg) => {
        if (msg.type() === "error") problems.push(`console error in the account page: ${msg.text()}`);
      });
      await account.setExtraHTTPHeaders({ "X-Forwarded-User": ACCOUNT_USER });
      await account.goto(`${ADMIN_URL}/`);
      await account.locator("#app").waitFor({ state: "visible" });
      const title = (await account.locator("#list-title").textContent()).trim();
      assert(title === `Tokens of ${ACCOUNT_USER}`, `account title "${title}"`);
      assert(await account.locator("#sign-out").isHidden(), "a sign-out button without a token to forget");
      assert((await account.evaluate(() => sessionStorage.length)) === 0, "the account mode stored something");
      await account.close();
    });
  }

  await step("no console errors, page errors, CSP violations or native dialogs", async () => {
    noProblemsYet("the browser reported");
  });
}

/** The create form in self-service mode (no user field). */
async function createViaFormSelf(page, { label, scopes = "", expiry = "" }) {
  await page.fill("#create-label", label);
  await page.selectOption("#create-expiry", expiry);
  await page.fill("#create-scopes", scopes);
  await page.fill("#create-rate", "");
  await page.fill("#create-quota", "");
  await page.click("#create-submit");
  const secret = page.getByTestId("secret-value");
  await secret.waitFor({ state: "visible" });
  return (await secret.textContent()).trim();
}

// ---------------------------------------------------------------------------------------------------------

const watchdog = setTimeout(() => {
  console.error(`FAIL ${currentStep}: the whole test took longer than ${OVERALL_TIMEOUT_MS / 1000}s`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);

try {
  await run();
  clearTimeout(watchdog);
  console.log(`browser: ${passed.length} passed, 0 failed`);
} catch (err) {
  clearTimeout(watchdog);
  const reason = err instanceof Failure ? err.message : err && err.stack ? err.stack : String(err);
  console.error(`FAIL ${currentStep}: ${reason}`);
  if (problems.length || nativeDialogs.length) {
    console.error(`also reported by the browser:\n  ${[...problems, ...nativeDialogs].join("\n  ")}`);
  }
  console.error(`browser: ${passed.length} passed, 1 failed`);
  process.exitCode = 1;
}

// tokengate admin page: a small, framework-free client of the admin JSON API (same origin, /api/*).
//
// Rules this file keeps:
// - Every value that comes from the API or the user is put into the page with textContent or DOM
//   attributes, never innerHTML: a label like `<img src=x onerror=...>` renders as text.
// - The admin token lives in sessionStorage only (this tab; gone when it closes), never in localStorage
//   or cookies. "Sign out" removes it.
// - A token's plaintext (after create or rotate) is held only by the one-time panel; "Done" removes the
//   panel from the DOM and the page keeps no other copy.
// - The page runs under a strict CSP (no inline script/style, no eval, form-action 'none'): forms are
//   handled here with preventDefault, styling is done with classes and the `hidden` attribute.

const STORAGE_KEY = "tokengate.adminToken";

/** Shorthand for document.getElementById that fails loudly when the HTML and the script disagree. */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`admin page: missing element #${id}`);
  return el;
}

/** Creates an element with a class and text (text via textContent, so it is never parsed as HTML). */
function el(tag, { cls, text, attrs } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (attrs) for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function show(node, visible = true) {
  node.hidden = !visible;
}

/** Shows `message` in an error paragraph, or hides it when the message is empty. */
function setError(node, message) {
  node.textContent = message || "";
  show(node, Boolean(message));
}

// ---------------------------------------------------------------------------------------------------------
// Admin token (sessionStorage only)
// ---------------------------------------------------------------------------------------------------------

function storedToken() {
  try {
    return sessionStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled: the user signs in again on every load
  }
}

function storeToken(token) {
  try {
    sessionStorage.setItem(STORAGE_KEY, token);
  } catch {
    /* storage disabled: the token lives in `state` for this page load only */
  }
}

function forgetToken() {
  try {
    sessionStorage.removeItem(STORAGE_KEY);
  } catch {
    /* nothing stored */
  }
}

const state = {
  adminToken: null,
  /** Who the API says we are (`GET /api/whoami`): mode "admin", "self" or "account", and the user. */
  caller: { mode: "admin", user: null },
  /** Token objects by id, as last received from the API (rows are rebuilt from these). */
  tokens: new Map(),
  /** Incremented per list request so an older, slower answer never overwrites a newer one. */
  listSeq: 0,
  /** Ids of tokens with a leak report (`GET /api/leaks`, admins only): shown with a "leaked" badge. */
  leaked: new Set(),
  /** Groups and licenses the caller may see (`GET /api/groups`, `/api/licenses`). */
  groups: [],
  licenses: [],
};

// ---------------------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------------------

/** An API failure with a message fit for the user (the server's `detail` when it sent one). */
class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * Calls the admin API with the admin token. Resolves to the parsed JSON body; rejects with an ApiError
 * whose message is the server's `detail` (or a readable fallback).
 */
async function api(method, path, body, token = state.adminToken) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  // Every write says it is JSON, bodiless ones too: in account mode the admin API refuses writes that
  // do not (a cross-site form cannot send that type without a preflight the API never grants).
  if (body !== undefined || method !== "GET") headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      // Same-origin only: the platform's login cookie (account mode) reaches its proxy, never elsewhere.
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "network", "Cannot reach the gateway's admin listener. Is it running?");
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const code = data && typeof data.error === "string" ? data.error : "";
    let message = data && typeof data.detail === "string" && data.detail ? data.detail : "";
    if (!message) message = code || `${response.status} ${response.statusText}`.trim();
    throw new ApiError(response.status, code, message);
  }
  return data;
}

/** Words for an authentication failure, for the sign-in form. */
function authProblem(err) {
  if (err.status === 401) return `This admin token was not accepted: ${err.message}`;
  if (err.status === 403) return `This token may not use the admin API (it needs the "admin" scope): ${err.message}`;
  return err.message;
}

/**
 * Handles an error from a call made while signed in: a 401/403 means the admin token stopped working
 * (revoked, expired, scope removed), so the user is sent back to the sign-in form with the reason.
 * Returns true when it did so.
 */
function handleAuthFailure(err) {
  // A 403 `forbidden` is a refused request (more than this caller may grant), not a lost sign-in.
  const lost = err instanceof ApiError && (err.status === 401 || (err.status === 403 && err.code !== "forbidden"));
  if (lost) {
    signOut(authProblem(err));
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------------------

const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A <time> element showing `iso` in local time, with the ISO value in its title; `fallback` for null. */
function timeCell(iso, fallback) {
  if (!iso) return el("span", { cls: "muted", text: fallback });
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return el("span", { text: iso });
  return el("time", { text: dateFormat.format(date), attrs: { datetime: iso, title: iso } });
}

// ---------------------------------------------------------------------------------------------------------
// Table
// ---------------------------------------------------------------------------------------------------------

/** Builds the table row of one token object. */
function tokenRow(token) {
  const tr = el("tr", {
    attrs: { "data-testid": "token-row", "data-token-id": String(token.id), "data-status": token.status },
  });
  if (token.status !== "active") tr.classList.add("inactive");

  // Label, with the scopes as small tags underneath.
  const labelCell = el("td", { cls: "label-cell" });
  labelCell.append(el("span", { cls: "label", text: token.label, attrs: { "data-testid": "label" } }));
  const meta = el("div", { cls: "meta" });
  meta.append(el("span", { cls: "token-id", text: `#${token.id}` }));
  for (const scope of token.scopes || []) {
    meta.append(el("span", { cls: "scope", text: scope, attrs: { "data-testid": "scope" } }));
  }
  for (const g of tokenAccess(token, state.groups, "members")) {
    meta.append(el("span", { cls: "scope group", text: `group ${g.name}`, attrs: { "data-testid": "group" } }));
  }
  for (const l of tokenAccess(token, state.licenses, "holders")) {
    const chip = el("span", {
      cls: `scope license${l.valid ? "" : " ended"}`,
      text: `license ${l.name}${l.valid ? "" : " (ended)"}`,
      attrs: { "data-testid": "license" },
    });
    meta.append(chip);
  }
  labelCell.append(meta);
  tr.append(labelCell);

  tr.append(el("td", { text: token.user, attrs: { "data-testid": "user" } }));

  const created = el("td", { attrs: { "data-testid": "created" } });
  created.append(timeCell(token.created_at, "—"));
  if (token.rotated_at) {
    const rotated = el("div", { cls: "meta meta-line" });
    rotated.append("rotated ", timeCell(token.rotated_at, ""));
    created.append(rotated);
  }
  tr.append(created);

  const lastUsed = el("td", { attrs: { "data-testid": "last-used" } });
  lastUsed.append(timeCell(token.last_used_at, "never"));
  tr.append(lastUsed);

  const statusCell = el("td");
  const badge = el("span", {
    cls: `badge badge-${["active", "revoked", "expired"].includes(token.status) ? token.status : "other"}`,
    text: token.status,
    attrs: { "data-testid": "status" },
  });
  if (token.status === "revoked" && token.revoked_at) badge.title = `revoked ${token.revoked_at}`;
  statusCell.append(badge);
  if (state.leaked.has(token.id)) {
    statusCell.append(
      " ",
      el("span", {
        cls: "badge badge-leaked",
        text: "leaked",
        attrs: { "data-testid": "leaked", title: "reported leaked: see the history" },
      }),
    );
  }
  tr.append(statusCell);

  tr.append(el("td", { cls: "num", text: token.use_count ?? 0, attrs: { "data-testid": "uses" } }));

  tr.append(limitsCell(token));

  const expires = el("td", { attrs: { "data-testid": "expires" } });
  expires.append(timeCell(token.expires_at, "never"));
  tr.append(expires);

  const actions = el("td", { cls: "actions" });
  const history = el("button", {
    cls: "button-small button-link",
    text: "History",
    attrs: { type: "button", "data-action": "history", "data-testid": "history" },
  });
  history.setAttribute("aria-label", `History of ${token.label}`);
  actions.append(history);
  if (token.status === "active") {
    const rotate = el("button", {
      cls: "button-small",
      text: "Rotate",
      attrs: { type: "button", "data-action": "rotate", "data-testid": "rotate" },
    });
    rotate.setAttribute("aria-label", `Rotate ${token.label}`);
    const edit = el("button", {
      cls: "button-small",
      text: "Edit",
      attrs: { type: "button", "data-action": "edit", "data-testid": "edit" },
    });
    edit.setAttribute("aria-label", `Edit ${token.label}`);
    actions.append(edit);
    const revoke = el("button", {
      cls: "button-small button-danger-quiet",
      text: "Revoke",
      attrs: { type: "button", "data-action": "revoke", "data-testid": "revoke" },
    });
    revoke.setAttribute("aria-label", `Revoke ${token.label}`);
    actions.append(rotate, revoke);
  }
  tr.append(actions);
  return tr;
}

/** The groups (or licenses) whose `members` (or `holders`) name the token or its user. */
function tokenAccess(token, all, key) {
  return (all || []).filter((x) =>
    (x[key] || []).some((m) => m.user === token.user || m.token_id === token.id),
  );
}

/** A member as the API's paths name it: the user id, or token:ID. */
function memberPath(m) {
  return m.token_id != null ? `token:${m.token_id}` : m.user;
}

/** Loads the groups and licenses the caller may see (its own user's for self-service). */
async function loadAccess() {
  try {
    const [groups, licenses] = await Promise.all([api("GET", "/api/groups"), api("GET", "/api/licenses")]);
    state.groups = Array.isArray(groups) ? groups : [];
    state.licenses = Array.isArray(licenses) ? licenses : [];
  } catch {
    state.groups = [];
    state.licenses = [];
  }
  renderAccess();
}

/** The admin's list of groups and licenses, each member with a Remove button. */
function renderAccess() {
  const admin = state.caller.mode === "admin";
  show($("access-section"), admin);
  if (!admin) return;
  const target = $("member-target");
  const chosen = target.value;
  target.replaceChildren(
    ...state.groups.map((g) => el("option", { text: `group ${g.name}`, attrs: { value: `groups/${g.name}` } })),
    ...state.licenses.map((l) => el("option", { text: `license ${l.name}`, attrs: { value: `licenses/${l.name}` } })),
  );
  if (chosen) target.value = chosen;
  const items = [];
  const entry = (kind, x, key, summary) => {
    const li = el("li", { attrs: { "data-testid": `access-${kind}`, "data-name": x.name } });
    li.append(el("strong", { text: `${kind} ${x.name}` }), " ", el("span", { cls: "muted", text: summary }));
    const members = el("ul");
    for (const m of x[key] || []) {
      const item = el("li", { text: m.token_id != null ? `token ${m.token_id} ` : `user ${m.user} ` });
      item.append(
        el("button", {
          cls: "button-small button-quiet",
          text: "Remove",
          attrs: {
            type: "button",
            "data-testid": "access-remove",
            "data-path": `/api/${kind === "group" ? "groups" : "licenses"}/${encodeURIComponent(x.name)}/${key}/${encodeURIComponent(memberPath(m))}`,
          },
        }),
      );
      members.append(item);
    }
    li.append(members);
    items.push(li);
  };
  for (const g of state.groups) entry("group", g, "members", `roles: ${g.roles.join(" ") || "none"}`);
  for (const l of state.licenses) {
    entry("license", l, "holders", `${l.seats_used}/${l.seats} seats, ${l.valid_until ? `until ${l.valid_until}` : "no end"}${l.valid ? "" : " (ended)"}`);
  }
  $("access-list").replaceChildren(...items);
}

/** Runs one admin write of the groups and licenses section, then reloads both lists. */
async function accessWrite(method, path, body) {
  try {
    await api(method, path, body);
    setError($("access-error"), "");
  } catch (err) {
    if (handleAuthFailure(err)) return;
    setError($("access-error"), err.message);
  }
  await loadAccess();
  renderTable();
}

/** The token's own rate limit and quota (with what is used of it and when that resets), or "none". */
function limitsCell(token) {
  const cell = el("td", { cls: "limits", attrs: { "data-testid": "limits" } });
  if (!token.rate_limit && !token.quota) {
    cell.append(el("span", { cls: "muted", text: "none" }));
    return cell;
  }
  if (token.rate_limit) {
    cell.append(el("div", { text: token.rate_limit, attrs: { "data-testid": "rate", title: "rate limit" } }));
  }
  if (token.quota) {
    const quota = el("div", {
      text: `${token.quota_used ?? 0} of ${token.quota}`,
      attrs: { "data-testid": "quota" },
    });
    if (token.quota_resets_at) quota.title = `quota resets ${token.quota_resets_at}`;
    cell.append(quota);
  }
  return cell;
}

function renderTable() {
  const body = $("tokens-body");
  const rows = [...state.tokens.values()]
    .sort((a, b) => b.id - a.id) // newest first
    .map(tokenRow);
  body.replaceChildren(...rows);
  show($("list-empty"), rows.length === 0);
}

/** Replaces one token's row in place (after revoke or rotate) without reloading the list. */
function updateToken(token) {
  state.tokens.set(token.id, token);
  const old = $("tokens-body").querySelector(`tr[data-token-id="${CSS.escape(String(token.id))}"]`);
  if (old) old.replaceWith(tokenRow(token));
  else renderTable();
}

/** The user the list is filtered by ("" for all). */
function currentFilter() {
  return $("filter-user").value.trim();
}

/** The ids of tokens reported leaked (an admin's view; empty for other callers or on any error). */
async function leakedTokenIds() {
  if (state.caller.mode !== "admin") return new Set();
  try {
    const reports = await api("GET", "/api/leaks");
    return new Set(
      (Array.isArray(reports) ? reports : [])
        .filter((r) => r.action === "revoked" || r.action === "reported")
        .map((r) => r.token_id),
    );
  } catch {
    return new Set();
  }
}

/** Loads the list from the API (honouring the user filter) and redraws the table. */
async function loadTokens() {
  const seq = ++state.listSeq;
  const user = currentFilter();
  const path = user ? `/api/tokens?user=${encodeURIComponent(user)}` : "/api/tokens";
  try {
    const tokens = await api("GET", path);
    if (seq !== state.listSeq) return; // a newer request is under way
    state.leaked = await leakedTokenIds();
    if (seq !== state.listSeq) return;
    state.tokens = new Map((Array.isArray(tokens) ? tokens : []).map((t) => [t.id, t]));
    setError($("list-error"), "");
    await loadAccess();
    if (seq !== state.listSeq) return;
    renderTable();
  } catch (err) {
    if (seq !== state.listSeq || handleAuthFailure(err)) return;
    setError($("list-error"), `Could not load tokens: ${err.message}`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// One-time secret panel
// ---------------------------------------------------------------------------------------------------------

/** Removes the secret panel (and with it the only copy of the plaintext in the page). */
function dismissSecret() {
  $("secret-slot").replaceChildren();
}

/**
 * Shows the plaintext of a just created or rotated token once, with Copy and Done. `heading` says what
 * happened ("Token created for alice").
 */
function showSecret(heading, token) {
  const panel = el("section", {
    cls: "card secret",
    attrs: { "data-testid": "secret-panel", "aria-labelledby": "secret-title" },
  });
  panel.append(el("h2", { text: heading, attrs: { id: "secret-title" } }));
  panel.append(
    el("p", {
      cls: "warning",
      text: "Copy this token now. It will not be shown again: tokengate keeps only its digest.",
    }),
  );

  const row = el("div", { cls: "secret-row" });
  const value = el("code", { cls: "secret-value", text: token, attrs: { "data-testid": "secret-value", id: "secret-value" } });
  const copy = el("button", { cls: "button-primary", text: "Copy", attrs: { type: "button", "data-testid": "secret-copy" } });
  const done = el("button", { text: "Done", attrs: { type: "button", "data-testid": "secret-done" } });
  const copied = el("span", { cls: "copied", attrs: { "data-testid": "secret-copied", role: "status" } });
  row.append(value, copy, done, copied);
  panel.append(row);

  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(value.textContent);
      copied.textContent = "Copied.";
    } catch {
      // No clipboard access (permissions, insecure context): select the text so Ctrl+C copies it.
      const range = document.createRange();
      range.selectNodeContents(value);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  done.addEventListener("click", () => {
    dismissSecret();
    (state.caller.mode === "admin" ? $("create-user") : $("create-label")).focus();
  });

  $("secret-slot").replaceChildren(panel);
  panel.scrollIntoView({ block: "nearest" });
  copy.focus();
}

// ---------------------------------------------------------------------------------------------------------
// Notices
// ---------------------------------------------------------------------------------------------------------

let noticeTimer = 0;

/** A short, self-clearing confirmation line ("Token #3 revoked."). */
function notice(message) {
  const node = $("notice");
  node.textContent = message;
  show(node, true);
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => show(node, false), 6000);
}

// ---------------------------------------------------------------------------------------------------------
// Sign in / out
// ---------------------------------------------------------------------------------------------------------

function showSignedIn(signedIn) {
  show($("signin"), !signedIn);
  show($("app"), signedIn);
  // Through the platform's account page there is no token here to forget.
  show($("sign-out"), signedIn && state.caller.mode !== "account");
}

/** Self-service (a tokens:self token, or the platform's account): one user's tokens, no user field. */
function applyMode(caller) {
  state.caller = caller;
  const own = caller.mode !== "admin";
  $("list-title").textContent = own ? `Tokens of ${caller.user}` : "Tokens";
  show($("create-user-field"), !own);
  show($("filter-form"), !own);
}

/** Asks the API who `token` (or, without one, this browser via the platform's account) is. */
async function whoami(token) {
  return api("GET", "/api/whoami", undefined, token);
}

/** Signs out: forgets the admin token, clears every token from the page, shows `reason` if given. */
function signOut(reason) {
  forgetToken();
  state.adminToken = null;
  applyMode({ mode: "admin", user: null });
  state.tokens = new Map();
  state.groups = [];
  state.licenses = [];
  state.listSeq++;
  dismissSecret();
  $("access-list").replaceChildren();
  show($("access-section"), false);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  $("tokens-body").replaceChildren();
  showSignedIn(false);
  setError($("signin-error"), reason || "");
  $("admin-token").value = "";
  $("admin-token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("admin-token");
  const token = input.value.trim();
  if (!token) {
    setError($("signin-error"), "Enter an admin token.");
    return;
  }
  const button = $("sign-in");
  button.disabled = true;
  try {
    // Check the token before keeping it: it needs the admin or tokens:self scope.
    applyMode(await whoami(token));
  } catch (err) {
    setError($("signin-error"), authProblem(err));
    return;
  } finally {
    button.disabled = false;
  }
  input.value = "";
  storeToken(token);
  state.adminToken = token;
  setError($("signin-error"), "");
  showSignedIn(true);
  await loadTokens();
  (state.caller.mode === "admin" ? $("create-user") : $("create-label")).focus();
}

// ---------------------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------------------

async function createToken(event) {
  event.preventDefault();
  const errorNode = $("create-error");
  const admin = state.caller.mode === "admin";
  const user = admin ? $("create-user").value.trim() : "";
  const label = $("create-label").value.trim();
  if ((admin && !user) || !label) {
    setError(errorNode, admin ? "User and label are required." : "A label is required.");
    (admin && !user ? $("create-user") : $("create-label")).focus();
    return;
  }
  // Self-service: the API makes the token for the caller's own user.
  const body = admin ? { user, label } : { label };
  const expiry = $("create-expiry").value;
  const expiresIn = expiry === "custom" ? $("create-expiry-custom").value.trim() : expiry;
  if (expiry === "custom" && !expiresIn) {
    setError(errorNode, "Enter how long the token lasts (like 12h or 14d), or choose “never”.");
    $("create-expiry-custom").focus();
    return;
  }
  if (expiresIn) body.expires_in = expiresIn;
  const scopes = $("create-scopes")
    .value.split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  if (scopes.length) body.scopes = scopes;
  const rate = $("create-rate").value.trim();
  if (rate) body.rate_limit = rate;
  const quota = $("create-quota").value.trim();
  if (quota) body.quota = quota;

  const button = $("create-submit");
  button.disabled = true;
  try {
    const created = await api("POST", "/api/tokens", body);
    setError(errorNode, "");
    const { token: plaintext, ...record } = created;
    $("create-form").reset();
    show($("create-expiry-custom-field"), false);
    // Show the new row when it matches the filter (the list answer is the truth for everything else).
    const filter = currentFilter();
    if (!filter || filter === record.user) {
      state.tokens.set(record.id, record);
      renderTable();
    }
    showSecret(`Token created for ${record.user}`, plaintext);
  } catch (err) {
    if (!handleAuthFailure(err)) setError(errorNode, `Could not create the token: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Rotate and revoke dialogs
// ---------------------------------------------------------------------------------------------------------

/** The id of the token the open dialog is about. */
let dialogTokenId = null;

function openRotate(token) {
  dialogTokenId = token.id;
  $("rotate-name").textContent = `“${token.label}”`;
  $("rotate-grace").value = "";
  setError($("rotate-error"), "");
  $("rotate-dialog").showModal();
  $("rotate-grace").focus();
}

async function confirmRotate(event) {
  event.preventDefault();
  const id = dialogTokenId;
  const grace = $("rotate-grace").value.trim();
  const button = $("rotate-confirm");
  button.disabled = true;
  try {
    const rotated = await api("POST", `/api/tokens/${id}/rotate`, grace ? { grace } : {});
    const { token: plaintext, ...record } = rotated;
    $("rotate-dialog").close();
    updateToken(record);
    const graceNote = grace ? ` (the old secret works for ${grace} more)` : "";
    showSecret(`New secret for “${record.label}”${graceNote}`, plaintext);
  } catch (err) {
    if (!handleAuthFailure(err)) setError($("rotate-error"), err.message);
  } finally {
    button.disabled = false;
  }
}

function openEdit(token) {
  dialogTokenId = token.id;
  $("edit-name").textContent = `“${token.label}”`;
  $("edit-label").value = token.label;
  $("edit-rate").value = token.rate_limit ?? "";
  $("edit-quota").value = token.quota ?? "";
  setError($("edit-error"), "");
  $("edit-dialog").showModal();
  $("edit-rate").focus();
}

async function confirmEdit(event) {
  event.preventDefault();
  const token = state.tokens.get(dialogTokenId);
  if (!token) return;
  const label = $("edit-label").value.trim();
  if (!label) {
    setError($("edit-error"), "The label cannot be empty.");
    $("edit-label").focus();
    return;
  }
  // Only what changed: an empty limit field clears the limit (null).
  const patch = {};
  if (label !== token.label) patch.label = label;
  const rate = $("edit-rate").value.trim() || null;
  if (rate !== (token.rate_limit ?? null)) patch.rate_limit = rate;
  const quota = $("edit-quota").value.trim() || null;
  if (quota !== (token.quota ?? null)) patch.quota = quota;
  if (Object.keys(patch).length === 0) {
    $("edit-dialog").close();
    return;
  }
  const button = $("edit-confirm");
  button.disabled = true;
  try {
    const updated = await api("PATCH", `/api/tokens/${token.id}`, patch);
    $("edit-dialog").close();
    updateToken(updated);
    notice(`Token “${updated.label}” updated.`);
  } catch (err) {
    if (!handleAuthFailure(err)) setError($("edit-error"), err.message);
  } finally {
    button.disabled = false;
  }
}

/** Opens the history dialog and fills it from GET /api/tokens/{id} (events, oldest first). */
async function openHistory(token) {
  dialogTokenId = token.id;
  $("history-name").textContent = `“${token.label}”`;
  const list = $("history-list");
  list.replaceChildren(el("li", { cls: "muted", text: "Loading…" }));
  setError($("history-error"), "");
  $("history-dialog").showModal();
  $("history-close").focus();
  try {
    const detail = await api("GET", `/api/tokens/${token.id}`);
    if (dialogTokenId !== token.id) return; // another dialog was opened meanwhile
    updateToken(stripEvents(detail)); // the freshest state of the row, too
    const events = Array.isArray(detail.events) ? detail.events : [];
    list.replaceChildren(
      ...events.map((e) => {
        const item = el("li", { attrs: { "data-testid": "history-event", "data-event": e.event } });
        const head = el("div", { cls: "history-head" });
        head.append(
          el("span", { cls: `event event-${e.event}`, text: e.event }),
          timeCell(e.at, ""),
          el("span", { cls: "muted", text: `by ${e.actor}` }),
        );
        item.append(head);
        if (e.detail) item.append(el("div", { cls: "history-detail", text: e.detail }));
        return item;
      }),
    );
    if (events.length === 0) list.replaceChildren(el("li", { cls: "muted", text: "No events recorded." }));
  } catch (err) {
    if (handleAuthFailure(err)) return;
    list.replaceChildren();
    setError($("history-error"), err.message);
  }
}

/** A token object without the `events` of GET /api/tokens/{id}. */
function stripEvents({ events, ...token }) {
  return token;
}

function openRevoke(token) {
  dialogTokenId = token.id;
  $("revoke-name").textContent = `“${token.label}”`;
  setError($("revoke-error"), "");
  $("revoke-dialog").showModal();
  $("revoke-cancel").focus(); // the safe choice has the focus
}

async function confirmRevoke(event) {
  event.preventDefault();
  const id = dialogTokenId;
  const button = $("revoke-confirm");
  button.disabled = true;
  try {
    const revoked = await api("DELETE", `/api/tokens/${id}`);
    $("revoke-dialog").close();
    updateToken(revoked);
    notice(`Token “${revoked.label}” revoked.`);
  } catch (err) {
    if (!handleAuthFailure(err)) setError($("revoke-error"), err.message);
  } finally {
    button.disabled = false;
  }
}

/** Row buttons, through one delegated listener on the table body. */
function onTableClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const row = button.closest("tr[data-token-id]");
  const token = row && state.tokens.get(Number(row.dataset.tokenId));
  if (!token) return;
  if (button.dataset.action === "history") openHistory(token);
  else if (button.dataset.action === "rotate") openRotate(token);
  else if (button.dataset.action === "edit") openEdit(token);
  else if (button.dataset.action === "revoke") openRevoke(token);
}

// ---------------------------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------------------------

function init() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("create-form").addEventListener("submit", createToken);
  $("create-expiry").addEventListener("change", () => {
    const custom = $("create-expiry").value === "custom";
    show($("create-expiry-custom-field"), custom);
    if (custom) $("create-expiry-custom").focus();
  });

  // Filter: on submit, on clear, and while typing (debounced).
  let filterTimer = 0;
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(filterTimer);
    loadTokens();
  });
  $("filter-user").addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(loadTokens, 300);
  });
  $("filter-clear").addEventListener("click", () => {
    clearTimeout(filterTimer);
    $("filter-user").value = "";
    loadTokens();
  });
  $("refresh").addEventListener("click", () => loadTokens());

  $("tokens-body").addEventListener("click", onTableClick);
  $("rotate-form").addEventListener("submit", confirmRotate);
  $("rotate-cancel").addEventListener("click", () => $("rotate-dialog").close());
  $("edit-form").addEventListener("submit", confirmEdit);
  $("edit-cancel").addEventListener("click", () => $("edit-dialog").close());
  $("history-close").addEventListener("click", () => $("history-dialog").close());
  $("revoke-form").addEventListener("submit", confirmRevoke);
  $("revoke-cancel").addEventListener("click", () => $("revoke-dialog").close());
  $("group-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const roles = $("group-roles").value.split(/[\s,]+/).filter(Boolean);
    accessWrite("POST", "/api/groups", { name: $("group-name").value.trim(), roles });
  });
  $("license-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { name: $("license-name").value.trim(), seats: Number($("license-seats").value) };
    const until = $("license-until").value.trim();
    if (until) body.valid_until = until;
    accessWrite("POST", "/api/licenses", body);
  });
  $("member-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const target = $("member-target").value;
    const who = $("member-who").value.trim();
    const key = target.startsWith("groups/") ? "members" : "holders";
    const [kind, ...rest] = target.split("/");
    const id = who.startsWith("token:") ? Number(who.slice(6)) : null;
    const body = id != null ? { token_id: id } : { user: who };
    accessWrite("POST", `/api/${kind}/${encodeURIComponent(rest.join("/"))}/${key}`, body);
  });
  $("access-list").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-path]");
    if (button) accessWrite("DELETE", button.dataset.path);
  });

  // Signed in earlier in this tab (e.g. after a reload): go straight to the list. If the token stopped
  // working meanwhile, loadTokens sends the user back to the sign-in form with the reason.
  const token = storedToken();
  if (token) {
    state.adminToken = token;
    whoami(token)
      .then((caller) => {
        applyMode(caller);
        showSignedIn(true);
        loadTokens();
      })
      .catch((err) => {
        if (!handleAuthFailure(err)) signOut(err.message);
      });
  } else if (document.body.dataset.account === "1") {
    // Embedded in the platform's account page: the trusted proxy names the user, no token needed (the
    // gateway marks the page so when the request carried that header from a trusted address).
    whoami(null)
      .then((caller) => {
        applyMode(caller);
        showSignedIn(true);
        loadTokens();
      })
      .catch(() => {
        showSignedIn(false);
        $("admin-token").focus();
      });
  } else {
    showSignedIn(false);
    $("admin-token").focus();
  }
}

init();

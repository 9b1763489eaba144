// The page: wires the form, the table and the protocol selector to a UserApi.

import { apiBaseUrl, isProtocol, PROTOCOLS, type Protocol, type User, type UserApi, type UserInput } from "./api";
import { ApiError, describeError, GrpcCode, type FieldViolation } from "./errors";
import { grpcWebBinaryClient } from "./grpcweb-binary";
import { grpcWebTextClient } from "./grpcweb-text";
import { describeChange, watchUsers } from "./live";
import { restClient } from "./rest";
import "./style.css";

const PAGE_SIZE = 10;
const FIELDS = ["name", "email", "age"] as const;

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`page is missing #${id}`);
  return found as T;
}

const ui = {
  apiBase: element<HTMLElement>("api-base"),
  protocol: element<HTMLSelectElement>("protocol"),
  error: element<HTMLElement>("error"),
  errorSummary: element<HTMLElement>("error-summary"),
  errorCodes: element<HTMLElement>("error-codes"),
  status: element<HTMLElement>("status"),
  form: element<HTMLFormElement>("user-form"),
  formTitle: element<HTMLElement>("form-title"),
  save: element<HTMLButtonElement>("save"),
  cancelEdit: element<HTMLButtonElement>("cancel-edit"),
  rows: element<HTMLTableSectionElement>("user-rows"),
  empty: element<HTMLElement>("empty"),
  pageInfo: element<HTMLElement>("page-info"),
  prev: element<HTMLButtonElement>("prev"),
  next: element<HTMLButtonElement>("next"),
  refresh: element<HTMLButtonElement>("refresh"),
  simulateStatus: element<HTMLSelectElement>("simulate-status"),
  simulate: element<HTMLButtonElement>("simulate"),
  liveState: element<HTMLElement>("live-state"),
  liveLog: element<HTMLOListElement>("live-log"),
};

/** Lines kept in the live log. */
const LIVE_LOG_LINES = 20;

const baseUrl = apiBaseUrl(window.location.href);
const clients: Record<Protocol, UserApi> = {
  rest: restClient(baseUrl),
  "grpc-web": grpcWebBinaryClient(baseUrl),
  "grpc-web-text": grpcWebTextClient(baseUrl),
};

const state = {
  protocol: initialProtocol(),
  page: 1,
  total: 0,
  editing: undefined as User | undefined,
};

function initialProtocol(): Protocol {
  const requested = new URL(window.location.href).searchParams.get("protocol") ?? "";
  return isProtocol(requested) ? requested : "rest";
}

function api(): UserApi {
  return clients[state.protocol];
}

function protocolLabel(): string {
  return PROTOCOLS.find((p) => p.value === state.protocol)?.label ?? state.protocol;
}

// === messages ===

function clearMessages(): void {
  ui.error.hidden = true;
  ui.errorSummary.textContent = "";
  ui.errorCodes.textContent = "";
  ui.status.textContent = "";
  showFieldErrors([]);
}

function showStatus(text: string): void {
  ui.status.textContent = text;
}

function showFieldErrors(violations: FieldViolation[]): void {
  for (const name of FIELDS) {
    // Services name fields "email" or "user.email"; the last segment picks the input.
    const messages = violations
      .filter((v) => v.field.split(".").pop() === name)
      .map((v) => v.description);
    const input = ui.form.elements.namedItem(name) as HTMLInputElement;
    element<HTMLElement>(`${name}-error`).textContent = messages.join(" ");
    input.setAttribute("aria-invalid", messages.length > 0 ? "true" : "false");
  }
}

function showError(reason: unknown): void {
  const error =
    reason instanceof ApiError ? reason : new ApiError(GrpcCode.UNKNOWN, String(reason), 500);
  const shown = describeError(error);
  ui.errorSummary.textContent = shown.summary;
  ui.errorCodes.textContent = `${shown.codes}${shown.codes ? " · " : ""}via ${protocolLabel()}`;
  ui.error.hidden = false;
  showFieldErrors(shown.fields);
}

/** Runs one user action: clears old messages, marks the page busy, reports failures. */
async function run(action: () => Promise<void>): Promise<void> {
  clearMessages();
  document.body.dataset.busy = "true";
  try {
    await action();
  } catch (reason) {
    showError(reason);
  } finally {
    document.body.dataset.busy = "false";
  }
}

// === table ===

function formatTime(unixSeconds: bigint): string {
  if (unixSeconds === 0n) return "";
  return new Date(Number(unixSeconds) * 1000).toISOString().replace("T", " ").slice(0, 16);
}

function renderUsers(users: User[]): void {
  ui.rows.replaceChildren(
    ...users.map((user) => {
      const row = document.createElement("tr");
      row.dataset.userId = user.id;
      for (const [cls, text] of [
        ["name", user.name],
        ["email", user.email],
        ["age", String(user.age)],
        ["created", formatTime(user.createdAt)],
      ]) {
        const cell = document.createElement("td");
        cell.className = cls;
        cell.textContent = text;
        row.append(cell);
      }
      const actions = document.createElement("td");
      const edit = document.createElement("button");
      edit.type = "button";
      edit.className = "edit";
      edit.textContent = "Edit";
      edit.addEventListener("click", () => startEdit(user));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "Delete";
      remove.addEventListener("click", () => void run(() => deleteUser(user)));
      actions.append(edit, remove);
      row.append(actions);
      return row;
    }),
  );
  ui.empty.hidden = users.length > 0;
  const pages = Math.max(1, Math.ceil(state.total / PAGE_SIZE));
  ui.pageInfo.textContent = `Page ${state.page} of ${pages} · ${state.total} users`;
  ui.prev.disabled = state.page <= 1;
  ui.next.disabled = state.page >= pages;
}

/** Counts list calls: only the latest one's answer is shown (live refreshes overlap actions). */
let listings = 0;

async function loadUsers(): Promise<void> {
  const listing = ++listings;
  const { users, total } = await api().list(state.page, PAGE_SIZE);
  if (listing !== listings) return;
  state.total = total;
  renderUsers(users);
}

// === form ===

function readForm(): UserInput {
  const value = (name: string) => (ui.form.elements.namedItem(name) as HTMLInputElement).value.trim();
  const age = value("age");
  // An empty or non-numeric age is sent as 0 and left to the service to judge.
  return { name: value("name"), email: value("email"), age: /^-?\d+$/.test(age) ? Number(age) : 0 };
}

function fillForm(input: UserInput | undefined): void {
  for (const name of FIELDS) {
    const field = ui.form.elements.namedItem(name) as HTMLInputElement;
    field.value = input ? String(input[name]) : "";
  }
}

function startEdit(user: User): void {
  clearMessages();
  state.editing = user;
  fillForm(user);
  ui.formTitle.textContent = `Edit ${user.name}`;
  ui.save.textContent = "Save changes";
  ui.cancelEdit.hidden = false;
}

function stopEdit(): void {
  state.editing = undefined;
  fillForm(undefined);
  ui.formTitle.textContent = "New user";
  ui.save.textContent = "Create";
  ui.cancelEdit.hidden = true;
}

async function saveForm(): Promise<void> {
  const input = readForm();
  if (state.editing) {
    const updated = await api().update(state.editing.id, input);
    stopEdit();
    await loadUsers();
    showStatus(`Updated ${updated.name} via ${protocolLabel()}.`);
  } else {
    const created = await api().create(input);
    stopEdit();
    await loadUsers();
    showStatus(`Created ${created.name} via ${protocolLabel()}.`);
  }
}

async function deleteUser(user: User): Promise<void> {
  await api().remove(user.id);
  if (state.editing?.id === user.id) stopEdit();
  await loadUsers();
  if (state.page > 1 && ui.rows.children.length === 0) {
    state.page -= 1;
    await loadUsers();
  }
  showStatus(`Deleted ${user.name} via ${protocolLabel()}.`);
}

// === wiring ===

ui.apiBase.textContent = baseUrl;
for (const { value, label } of PROTOCOLS) {
  ui.protocol.append(new Option(label, value, value === state.protocol, value === state.protocol));
}
ui.protocol.addEventListener("change", () => {
  if (isProtocol(ui.protocol.value)) state.protocol = ui.protocol.value;
  void run(loadUsers);
});
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  void run(saveForm);
});
ui.cancelEdit.addEventListener("click", () => {
  clearMessages();
  stopEdit();
});
ui.refresh.addEventListener("click", () => void run(loadUsers));
ui.prev.addEventListener("click", () => {
  state.page = Math.max(1, state.page - 1);
  void run(loadUsers);
});
ui.next.addEventListener("click", () => {
  state.page += 1;
  void run(loadUsers);
});
ui.simulate.addEventListener("click", () =>
  void run(async () => {
    const message = await api().testError(ui.simulateStatus.value);
    showStatus(`The service answered OK: ${message}`);
  }),
);

// === live changes ===

let refreshTimer: ReturnType<typeof setTimeout> | undefined;

/** Lists again shortly (a burst of changes is one refresh), without touching the messages. */
function refreshSoon(): void {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    loadUsers().catch(showError);
  }, 100);
}

watchUsers(baseUrl, {
  opened: refreshSoon,
  changed(event) {
    const line = document.createElement("li");
    line.dataset.userId = event.userId;
    line.dataset.type = event.type;
    line.textContent = describeChange(event);
    ui.liveLog.prepend(line);
    while (ui.liveLog.children.length > LIVE_LOG_LINES) ui.liveLog.lastElementChild?.remove();
    refreshSoon();
  },
  state(state) {
    ui.liveState.textContent = state;
    ui.liveState.dataset.state = state;
  },
});

void run(loadUsers);

// Sign-in with an API token (from `pacs users add NAME --role ROLE`), checked with GET /api/me.

import * as api from "../api.js";
import { clear, h, notice, showBanner } from "../ui.js";

export function renderSignIn(root, { message = "", done }) {
  clear(root);
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    placeholder: "API token",
    "data-testid": "token-input",
    "aria-describedby": "token-help",
  });
  const status = h("div", { class: "signin-status", "aria-live": "polite", "data-testid": "signin-status" });
  const button = h("button", { type: "submit", class: "btn primary", "data-testid": "sign-in" }, "Sign in");
  if (message) status.append(notice("info", message, "signin-message"));

  async function submit(event) {
    event.preventDefault();
    const candidate = input.value.trim();
    clear(status);
    if (!candidate) {
      status.append(notice("error", "Enter your API token.", "signin-error"));
      return;
    }
    button.disabled = true;
    status.append(notice("loading", "Checking the token…", "signin-progress"));
    try {
      const me = await api.signIn(candidate);
      if (!me.permissions.includes("query") || !me.permissions.includes("retrieve")) {
        api.signOut();
        clear(status).append(
          notice(
            "error",
            `This token's role (${me.role}) cannot search or view images. Ask an administrator for an inspector or auditor token.`,
            "signin-error",
          ),
        );
        return;
      }
      done(me);
    } catch (error) {
      clear(status);
      if (error.kind === "down") {
        showBanner("The archive does not answer. Check that the server is running, then retry.", () => form.requestSubmit());
        status.append(notice("error", "The archive does not answer.", "signin-error"));
      } else if (error.kind === "expired") {
        status.append(notice("error", "Your token expired. Ask an administrator for a new one.", "signin-error"));
      } else if (error.kind === "invalid") {
        status.append(notice("error", "This token is not valid. Check it, or ask an administrator for one.", "signin-error"));
      } else {
        status.append(notice("error", error.message, "signin-error"));
      }
    } finally {
      button.disabled = false;
    }
  }

  const form = h(
    "form",
    { class: "signin-card", "data-testid": "signin-form", onsubmit: submit, "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    h("p", { class: "muted" }, "Inspection image archive. Sign in with your API token; it is kept only for this browser tab."),
    h("label", { for: "token" }, "API token"),
    input,
    h("p", { id: "token-help", class: "hint" }, "An administrator makes one with ", h("code", {}, "pacs users add NAME --role inspector"), "."),
    button,
    status,
  );
  root.append(h("section", { class: "signin", "data-testid": "signin" }, form));
  input.focus();
  return () => {};
}

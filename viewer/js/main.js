// Entry point: session, header, routes (hash URLs, so every view can be bookmarked and shared).
//
//   #/signin                        sign in with an API token
//   #/worklist?part=&name=&from=&to=&method=&sort=&dir=&page=
//   #/part/<part ID>?study=<uid>   one component: inspections on a timeline, series, images
//   #/view?a=<study>/<series>/<instance>[&b=...][&frame=N]   one image, or two side by side

import * as api from "./api.js";
import { currentRoute, go, hideBanner, showBanner, wireBanner } from "./ui.js";
import { renderSignIn } from "./views/signin.js";
import { renderWorklist } from "./views/worklist.js";
import { renderPart } from "./views/part.js";
import { renderImages } from "./views/image.js";

const app = document.getElementById("app");
let cleanup = null;
let signInMessage = "";

function header() {
  const me = api.user();
  const box = document.querySelector('[data-testid="user"]');
  document.querySelector('[data-testid="nav-worklist"]').hidden = !me;
  box.hidden = !me;
  if (!me) return;
  box.querySelector('[data-testid="user-name"]').textContent = me.name;
  const role = box.querySelector('[data-testid="user-role"]');
  role.textContent = me.role;
  role.dataset.role = me.role;
  const expiry = box.querySelector('[data-testid="token-expiry"]');
  expiry.textContent = me.token_expires_at ? `token until ${me.token_expires_at.slice(0, 16).replace("T", " ")} UTC` : "";
}

/** The session ended under us (revoked or expired token): back to sign-in, saying why. */
function sessionEnded(error) {
  api.signOut();
  signInMessage =
    error.kind === "expired"
      ? "Your token expired. Ask an administrator for a new one, then sign in again."
      : "Your token is no longer valid (revoked or unknown). Sign in with a valid token.";
  if (currentRoute().path !== "/signin") sessionStorage.setItem("ndt-viewer.next", location.hash);
  go("/signin");
}

api.onSessionProblem((error) => {
  if (error.kind === "down") showBanner("The archive does not answer. Check that the server is running, then retry.", route);
  else sessionEnded(error);
});

function route() {
  hideBanner();
  if (cleanup) {
    cleanup();
    cleanup = null;
  }
  header();
  const { path, params } = currentRoute();
  document.body.dataset.view = path.split("/")[1] || "worklist";
  if (!api.token()) {
    if (path !== "/signin") {
      sessionStorage.setItem("ndt-viewer.next", location.hash);
      go("/signin", {}, true);
    }
    document.body.dataset.view = "signin";
    cleanup = renderSignIn(app, {
      message: signInMessage,
      done: () => {
        signInMessage = "";
        const next = sessionStorage.getItem("ndt-viewer.next");
        sessionStorage.removeItem("ndt-viewer.next");
        const target = next && !next.startsWith("#/signin") ? next : "#/worklist";
        if (location.hash === target) route();
        else location.hash = target;
      },
    });
    return;
  }
  if (path === "/signin") {
    go("/worklist", {}, true);
    return route();
  }
  if (path.startsWith("/part/")) cleanup = renderPart(app, decodeURIComponent(path.slice("/part/".length)), params);
  else if (path === "/view") cleanup = renderImages(app, params);
  else cleanup = renderWorklist(app, params);
}

document.querySelector('[data-testid="sign-out"]').addEventListener("click", () => {
  api.signOut();
  signInMessage = "You are signed out.";
  go("/signin");
});

wireBanner();
window.addEventListener("hashchange", route);
route();

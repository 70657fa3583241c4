// altdb's web console: a client of the aggregator's public HTTP API. Pages
// by URL fragment: #/query, #/collections[/name], #/lambdas[/name], #/cluster.
import "./app.css";
import { storeKey, storedKey, whenUnauthenticated } from "./api.js";
import { clusterPage } from "./cluster.js";
import { collectionPage, collectionsPage } from "./collections.js";
import { errorBox, h, show } from "./dom.js";
import { lambdaPage, lambdasPage } from "./lambdas.js";
import { queryPage } from "./query.js";

const main = document.getElementById("main");
const login = document.getElementById("login");
let timer = null;

// The route() call that rendered the page shown now.
let shown = null;

function route() {
  const visit = {};
  shown = visit;
  clearInterval(timer);
  timer = null;
  const [section = "query", ...rest] = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  const name = rest.length ? decodeURIComponent(rest.join("/")) : null;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const pages = {
    query: () => queryPage(main),
    collections: () => (name ? collectionPage(main, name) : collectionsPage(main)),
    lambdas: () => (name ? lambdaPage(main, name) : lambdasPage(main)),
    cluster: async () => {
      const refresh = await clusterPage(main);
      // Left before the page loaded: its refresh must not outlive it.
      if (shown === visit) timer = refresh;
      else clearInterval(refresh);
    },
  };
  const page = pages[section] ?? pages.query;
  document.title = `${name ?? section[0].toUpperCase() + section.slice(1)} · altdb`;
  Promise.resolve()
    .then(page)
    .catch((error) => {
      show(main, errorBox(error), error.status === 401
        ? h("button", { type: "button", class: "primary", onclick: () => askForKey(error.message) }, "Enter an API key")
        : null);
    });
}

function askForKey(reason) {
  document.getElementById("login-reason").textContent = reason ?? "";
  const input = document.getElementById("login-key");
  input.value = "";
  if (!login.open) login.showModal();
  input.focus();
}

whenUnauthenticated((error) => askForKey(error.message));
document.getElementById("login-form").addEventListener("submit", () => {
  storeKey(document.getElementById("login-key").value.trim());
  route();
});
document.getElementById("sign-out").addEventListener("click", () => {
  askForKey(storedKey() ? "Paste another key, or the same one again." : "");
});
addEventListener("hashchange", () => {
  route();
  main.focus({ preventScroll: true });
});
route();

// Live progress: every element with data-poll="<job id>" asks /ui/jobs/<id>/progress
// every 2 s until the job is final; a training panel (data-training="<job id>") is
// re-fetched whole from /ui/jobs/<id>/training every second (its worker writes about
// once a second), so its epoch counter and curves grow while it trains. Plain fetch,
// same-origin cookie, no library.
"use strict";

const POLL_MS = 2000;
const TRAINING_POLL_MS = 1000;

function percent(n, total) {
  return total ? Math.round((100 * n) / total) : 0;
}

function show(el, p) {
  el.querySelector(".done").style.width = percent(p.done, p.total) + "%";
  el.querySelector(".failed").style.width = percent(p.failed, p.total) + "%";
  el.querySelector(".count").textContent =
    p.state === "preparing"
      ? `preparing: ${p.total} images listed so far`
      : `${p.done + p.failed} / ${p.total}`;
  const scope = el.closest("tr, .job-head");
  const badge = scope && scope.querySelector(".state");
  if (badge) {
    badge.textContent = p.state;
    badge.className = `state state-${p.state}`;
  }
}

function poll(el) {
  const url = `/ui/jobs/${encodeURIComponent(el.dataset.poll)}/progress`;
  const tick = async () => {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401 || answer.status === 404) return;
      if (answer.ok) {
        const p = await answer.json();
        show(el, p);
        if (p.final) {
          el.removeAttribute("data-poll");
          el.dataset.final = p.state;
          return;
        }
      }
    } catch (_) {
      // Network hiccup: try again at the next tick.
    }
    setTimeout(tick, POLL_MS);
  };
  setTimeout(tick, POLL_MS);
}

function pollTraining(el) {
  const url = `/ui/jobs/${encodeURIComponent(el.dataset.training)}/training`;
  let current = el;
  const tick = async () => {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.status === 401 || answer.status === 404) return;
      if (answer.ok) {
        const holder = document.createElement("div");
        holder.innerHTML = await answer.text();
        const fresh = holder.querySelector("section.training");
        if (fresh) {
          current.replaceWith(fresh);
          current = fresh;
          if (!fresh.dataset.training) return; // the job is final
        }
      }
    } catch (_) {
      // Network hiccup: try again at the next tick.
    }
    setTimeout(tick, TRAINING_POLL_MS);
  };
  setTimeout(tick, TRAINING_POLL_MS);
}

document.querySelectorAll("[data-poll]").forEach(poll);
document.querySelectorAll("[data-training]").forEach(pollTraining);

// Label switch of a multi-label result: each button holds one explained label's
// overlay; a click shows it in the card's heatmap figure, with its name and scale.
document.addEventListener("click", (event) => {
  const button = event.target.closest(".label-switch button");
  if (!button) return;
  const card = button.closest(".card");
  const img = card.querySelector("figure.overlay img");
  img.src = button.dataset.src;
  img.alt = `heatmap overlay of ${card.dataset.key} for ${button.dataset.label}`;
  card.querySelector(".overlay-label").textContent = button.dataset.label;
  card.querySelector(".overlay-scale").textContent = button.dataset.scale;
  card.querySelectorAll(".label-switch button").forEach((b) => {
    b.setAttribute("aria-pressed", b === button ? "true" : "false");
  });
});

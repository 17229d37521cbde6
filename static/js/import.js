// Import page: the zip is posted to /api/import in the background (background=1) with its upload
// progress, then the job is polled until it is done, with a progress bar of photos done.
// Everything from the server is put in the page with textContent, never as HTML.
(function () {
  "use strict";

  const form = document.getElementById("import-form");
  if (!form) return;

  const POLL_MS = 500;
  const byId = (id) => document.getElementById(id);
  const box = byId("import-progress");
  const bar = byId("import-bar");
  const status = byId("import-status");
  const result = byId("import-result");
  const submit = byId("import-submit");

  function el(tag, text) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function show(done, total, text) {
    box.hidden = false;
    bar.max = total || 1;
    bar.value = done;
    status.textContent = text;
  }

  function fail(message) {
    submit.disabled = false;
    box.hidden = true;
    result.replaceChildren(el("p", `Nothing was imported: ${message}`));
    result.firstChild.className = "flash error";
  }

  function finished(counts) {
    submit.disabled = false;
    show(1, 1, "Done.");
    const summary = el("p", `${counts.photos_added} photo(s) added, ${counts.people_added} new person(s), ` +
      `${counts.duplicates} duplicate(s) skipped, ${counts.corrections_added} correction(s) restored, ` +
      `${counts.refused.length} file(s) not imported.`);
    summary.id = "import-counts";
    const parts = [summary];
    if (counts.refused.length) {
      const table = el("table");
      table.id = "import-refused";
      const head = el("tr");
      head.append(el("th", "File"), el("th", "Why it was not imported"));
      table.append(el("thead"), el("tbody"));
      table.tHead.append(head);
      for (const item of counts.refused) {
        const row = el("tr");
        row.append(el("td", item.file), el("td", item.reason));
        table.tBodies[0].append(row);
      }
      parts.push(table);
    }
    const link = el("a", "See everyone");
    link.href = "/people";
    parts.push(el("p"));
    parts[parts.length - 1].append(link);
    result.replaceChildren(...parts);
  }

  async function poll(url) {
    for (;;) {
      const answer = await fetch(url, { headers: { Accept: "application/json" } });
      const job = await answer.json().catch(() => ({ error: `the server answered ${answer.status}` }));
      if (!answer.ok) return fail(job.error || `the server answered ${answer.status}`);
      if (job.state === "failed") return fail(job.error);
      if (job.state === "done") return finished(job.result);
      show(job.done, job.total, job.total ? `Importing: ${job.done} of ${job.total} photos` : "Reading the archive…");
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    data.append("background", "1");
    const request = new XMLHttpRequest();
    request.open("POST", form.dataset.apiUrl);
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("X-CSRFToken", data.get("csrf_token"));
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) show(e.loaded, e.total, `Uploading: ${Math.round((100 * e.loaded) / e.total)}%`);
    });
    request.addEventListener("load", () => {
      let body = {};
      try { body = JSON.parse(request.responseText); } catch (_) { /* not JSON: reported below */ }
      if (request.status === 202) poll(body.url).catch((error) => fail(String(error)));
      else fail(body.error || `the server answered ${request.status}`);
    });
    request.addEventListener("error", () => fail("the upload did not reach the server"));
    submit.disabled = true;
    result.replaceChildren();
    show(0, 1, "Uploading…");
    request.send(data);
  });
})();

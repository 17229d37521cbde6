// Person page: the ticked photos can be moved to someone else or made a new person.
// The buttons wait for a tick; moving every photo away asks first, since the person is left with none.
(function () {
  "use strict";

  const form = document.getElementById("regroup");
  if (!form) return;

  const boxes = Array.from(document.querySelectorAll('input[type="checkbox"][name="photo"][form="regroup"]'));
  const count = document.getElementById("regroup-count");
  const buttons = form.querySelectorAll('button[name="action"]');
  const name = form.dataset.personName;

  function ticked() {
    return boxes.filter((box) => box.checked).length;
  }

  function update() {
    const n = ticked();
    count.textContent = n ? `${n} ticked photo${n === 1 ? "" : "s"}:` : "Tick photos above, then:";
    for (const button of buttons) button.disabled = n === 0;
  }

  for (const box of boxes) box.addEventListener("change", update);

  form.addEventListener("submit", (event) => {
    const n = ticked();
    const action = event.submitter ? event.submitter.value : "move";
    if (n === boxes.length) {
      const where = action === "new" ? "the new person" : "the chosen person";
      const question = `Move all ${n} photo${n === 1 ? "" : "s"} of ${name} to ${where}? ${name} is left with no photos.`;
      if (!window.confirm(question)) event.preventDefault();
    }
  });

  update();
})();

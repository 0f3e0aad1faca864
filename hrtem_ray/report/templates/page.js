const views = {};
function hasSignal(view, name) {
  try { view.signal(name); return true; } catch (error) { return false; }
}
async function embedAll() {
  for (const element of document.querySelectorAll('.chart')) {
    const spec = JSON.parse(document.getElementById(element.dataset.spec).textContent);
    const result = await vegaEmbed(element, spec, {renderer: 'svg', actions: false});
    (views[element.dataset.study] = views[element.dataset.study] || []).push(result.view);
  }
}
for (const select of document.querySelectorAll('select.control')) {
  select.addEventListener('change', async () => {
    document.body.dataset.updating = 'true';
    for (const view of views[select.dataset.study] || []) {
      if (hasSignal(view, select.dataset.param)) {
        view.signal(select.dataset.param, select.value);
        await view.runAsync();
      }
    }
    document.body.dataset.updating = 'false';
  });
}
embedAll().then(
  () => { document.body.dataset.rendered = 'true'; },
  (error) => { document.body.dataset.rendered = 'error'; console.error(error); }
);

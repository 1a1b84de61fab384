// The Map page's Regions layer (dashboard/regions_view.py, region_layer): an outline per region
// (layout shapes) and a label at its centre (layout annotations), kept on the map graph whatever
// redraws it. The browser recolours and filters the points with Plotly.update (assets/dashboard.js),
// which leaves the layout's shapes alone, but a new figure from the server (large runs, a theme
// switch) replaces them: after every plot the layer is put back when it is missing or stale. Our
// items are named "llm-region:<key>:<i>"; other shapes and annotations are left as they are.
// Clicking a region's label chooses that region (the same as its row in the Regions table).
(() => {
  const NO = () => window.dash_clientside.no_update;
  const R = {layer: {shapes: [], annotations: []}, key: 0, busy: false, again: false};
  const ours = (item) => item && typeof item.name === 'string' && item.name.startsWith('llm-region:');

  function sync(gd) {
    if (R.busy) { R.again = true; return; }
    const lay = gd.layout || {};
    const shapes = lay.shapes || [], anns = lay.annotations || [];
    const tag = 'llm-region:' + R.key + ':';
    const haveS = shapes.filter(ours), haveA = anns.filter(ours);
    const want = R.layer || {shapes: [], annotations: []};
    if (haveS.length === (want.shapes || []).length && haveA.length === (want.annotations || []).length
        && haveS.concat(haveA).every((s) => s.name.startsWith(tag))) return;
    const named = (items) => (items || []).map((s, i) => Object.assign({}, s, {name: tag + i}));
    R.busy = true;
    Plotly.relayout(gd, {shapes: shapes.filter((s) => !ours(s)).concat(named(want.shapes)),
                         annotations: anns.filter((a) => !ours(a)).concat(named(want.annotations))})
      .catch((e) => console.warn('llm-maps regions layer:', e && e.message ? e.message : e))
      .finally(() => {
        R.busy = false;
        if (R.again) { R.again = false; sync(gd); }  // what changed meanwhile
      });
  }

  function chooseRegion(ev) {
    const a = ev && ev.annotation;
    const m = a && /^<b>R(\d+)<\/b>/.exec(a.text || '');
    if (!m || !window.dash_clientside.set_props) return;
    window.dash_clientside.set_props('map-region', {value: Number(m[1])});
  }

  // the Regions table's numeric columns: rows without a value last, ascending or descending
  // (dashboard/regions_view.py NULLS_LAST)
  const grid = (window.dashAgGridFunctions = window.dashAgGridFunctions || {});
  grid.regionsNullsLast = (a, b, nodeA, nodeB, isDescending) => {
    const na = a === null || a === undefined, nb = b === null || b === undefined;
    if (na && nb) return 0;
    if (na) return isDescending ? -1 : 1;
    if (nb) return isDescending ? 1 : -1;
    return a - b;
  };

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    llm_regions: {
      layer(spec) {
        R.layer = spec || {shapes: [], annotations: []};
        R.key += 1;
        if (window.llmMapGL) window.llmMapGL.regions(R.layer);  // the WebGL map draws it itself (mapgl.js)
        if (document.querySelector('.map-gl-host')) return NO();  // no Plotly map on this page
        window.llmMaps.plotted('map-graph', 60000).then((gd) => {
          if (!gd.__llmRegionHook) {
            gd.__llmRegionHook = true;
            gd.on('plotly_afterplot', () => sync(gd));
            gd.on('plotly_clickannotation', chooseRegion);
          }
          sync(gd);
        }).catch(() => {});  // no map on this page
        return NO();
      },
    },
  });
})();

// The traces LLM Maps draws: the map (scattergl), its density view (heatmap), the falloff plot,
// neighbour lines and generation paths (scatter, in core). Anything else is left out, which makes
// the bundle a third of plotly.min.js and about five times faster to evaluate.
var Plotly = require('plotly.js/lib/core');

Plotly.register([
    require('plotly.js/lib/scattergl'),
    require('plotly.js/lib/heatmap'),
]);

module.exports = Plotly;

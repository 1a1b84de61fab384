// Builds ../../dashboard/assets/vendor/plotly-llm-maps.min.js with plotly.js's own esbuild
// settings (esbuild-config.js in the plotly.js package), from entry.js.
//     cd tools/plotly-bundle && npm ci && npm run build
const path = require('path');
const fs = require('fs');
const esbuild = require('esbuild');
const { environmentPlugin } = require('esbuild-plugin-environment');
const { glsl } = require('esbuild-plugin-glsl');
const InlineCSSPlugin = require('esbuild-plugin-inline-css');

const version = require('plotly.js/package.json').version;
const outfile = path.join(__dirname, '..', '..', 'dashboard', 'assets', 'vendor', 'plotly-llm-maps.min.js');

esbuild.build({
    entryPoints: [path.join(__dirname, 'entry.js')],
    outfile,
    format: 'iife',
    globalName: 'Plotly',
    bundle: true,
    minify: true,
    legalComments: 'eof',
    banner: { js: `/* plotly.js v${version} (MIT, https://github.com/plotly/plotly.js), traces: scatter, scattergl, heatmap;` +
                  ` built for LLM Maps by tools/plotly-bundle */` },
    plugins: [InlineCSSPlugin(), glsl({ minify: true }), environmentPlugin({ NODE_DEBUG: false })],
    alias: { regl: '@plotly/regl', stream: 'stream-browserify' },
    define: { global: 'window', 'define.amd': 'false' },
    target: 'es2016',
    logLevel: 'info',
}).then(() => {
    console.log(`${outfile}: ${fs.statSync(outfile).size} bytes, plotly.js ${version}`);
}).catch(() => process.exit(1));

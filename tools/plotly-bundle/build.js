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

// One patch to plotly.js (src/lib/gl_format_color.js): WebGL traces turn every point's colour value
// into RGBA by evaluating the colour scale and parsing the colour string it returns, 100k times for
// 100k points even when there are 48 distinct values (a colouring by task). Memoising per distinct
// value within one call gives the same colours (calculateColor copies each result) with 48
// evaluations. The build fails if the patched text is not found.
const MEMO = `
function memoColor(get) {  // LLM Maps patch: one colour evaluation per distinct value
    var memo = new Map();
    return function(c, i) {
        var v = c[i];
        if(typeof v !== 'number' && typeof v !== 'string') return get(c, i);
        var hit = memo.get(v);
        if(hit === undefined) {
            hit = get(c, i);
            if(memo.size < 4096) memo.set(v, hit);
        }
        return hit;
    };
}
`;
const patchColours = {
    name: 'llm-maps-memo-colours',
    setup(build) {
        build.onLoad({ filter: /gl_format_color\.js$/ }, (args) => {
            const anchor = '    } else getColor = validateColor;\n';
            let src = fs.readFileSync(args.path, 'utf8');
            if (!src.includes(anchor)) throw new Error(`${args.path}: patch anchor not found (plotly.js changed)`);
            src = src.replace(anchor, anchor + '    if(isArrayColorIn) getColor = memoColor(getColor);\n') + MEMO;
            return { contents: src, loader: 'js' };
        });
    },
};
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
                  ` colours memoised per value; built for LLM Maps by tools/plotly-bundle */` },
    plugins: [patchColours, InlineCSSPlugin(), glsl({ minify: true }), environmentPlugin({ NODE_DEBUG: false })],
    alias: { regl: '@plotly/regl', stream: 'stream-browserify' },
    define: { global: 'window', 'define.amd': 'false' },
    target: 'es2016',
    logLevel: 'info',
}).then(() => {
    console.log(`${outfile}: ${fs.statSync(outfile).size} bytes, plotly.js ${version}`);
}).catch(() => process.exit(1));

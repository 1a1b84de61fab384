// A small WebGL2 point renderer for the Map page (assets/mapgl.js drives it; no library), and
// the same renderer on the CPU for machines whose WebGL is software (CPUScatter, below).
//
// Every array lives in a GPU buffer, uploaded once: the coordinates (float32, one buffer each),
// and every column a colour can come from (category codes as uint8/uint16, values as float32), kept
// per name. What changes with the page's controls is small:
//   recolour   another column buffer bound to the colour attribute, a palette texture (a colour per
//              category code, or a 1024-step lookup of a continuous colour scale) and two uniforms
//   filter     the element index buffer: the rows drawn, in drawing order (uint32, one draw call)
//   dim train  a uniform (the split column is an attribute)
//   selection  a uint8 mask attribute (unselected points faint)
//   pan, zoom  four uniforms
// Points are discs of a fixed size in CSS pixels, drawn in the order of the index buffer (later
// points above earlier ones), alpha-blended (premultiplied).
(() => {
  const VS = `#version 300 es
precision highp float;
in float ax;
in float ay;
in float av;
in float asplit;
in float asel;
uniform vec4 uView;      // x0, y0, 1 / (x1 - x0), 1 / (y1 - y0)
uniform int uKind;       // 0: av is a category code; 1: a value mapped through [uLo, uHi]
uniform float uLo;
uniform float uHi;
uniform sampler2D uPal;  // 1 row: a colour per code, or LUT steps of the colour scale
uniform float uSteps;    // LUT steps - 1 (continuous)
uniform vec4 uMissing;   // colour of values below MISSING_VALUE (no value)
uniform float uSize;
uniform float uAlpha;
uniform float uDimAlpha;
uniform float uTrain;    // the split code drawn at uDimAlpha; -1: none
uniform float uSelOn;    // 1: points with asel == 0 are faint
out vec4 vColor;
void main() {
  gl_Position = vec4((ax - uView.x) * uView.z * 2.0 - 1.0, (ay - uView.y) * uView.w * 2.0 - 1.0, 0.0, 1.0);
  gl_PointSize = uSize;
  vec4 c;
  if (uKind == 0) {
    c = texelFetch(uPal, ivec2(int(av + 0.5), 0), 0);
  } else if (av < -1.0e37) {
    c = uMissing;
  } else {
    float t = clamp((av - uLo) / max(uHi - uLo, 1.0e-30), 0.0, 1.0);
    c = texelFetch(uPal, ivec2(int(t * uSteps + 0.5), 0), 0);
  }
  float a = uAlpha;
  if (uTrain >= 0.0 && abs(asplit - uTrain) < 0.5) a = uDimAlpha;
  if (uSelOn > 0.5 && asel < 0.5) a *= 0.25;
  vColor = vec4(c.rgb * a, a);
}`;
  const FS = `#version 300 es
precision highp float;
in vec4 vColor;
uniform float uSize;
out vec4 outColor;
void main() {
  vec2 d = gl_PointCoord * 2.0 - 1.0;
  float r = length(d);
  if (r > 1.0) discard;
  float edge = clamp((1.0 - r) * uSize * 0.5 + 0.5, 0.0, 1.0);  // about one pixel of antialiasing
  outColor = vColor * edge;
}`;
  const LUT = 1024;                 // steps of a continuous colour scale
  const MISSING_VALUE = -3.0e38;    // what non-finite values become in a value buffer
  const ATTRS = ['ax', 'ay', 'av', 'asplit', 'asel'];
  const GLTYPE = (gl, arr) => (arr instanceof Float32Array ? gl.FLOAT : arr instanceof Uint8Array ? gl.UNSIGNED_BYTE
    : arr instanceof Uint16Array ? gl.UNSIGNED_SHORT : arr instanceof Int32Array ? gl.INT : null);

  function parseColour(c) {  // '#rrggbb', '#rgb', 'rgb(r,g,b)', 'rgba(...)' -> [r, g, b, a] in 0..1
    if (Array.isArray(c)) return c;
    const s = String(c).trim();
    if (s[0] === '#') {
      let h = s.slice(1);
      if (h.length === 3) h = h.split('').map((ch) => ch + ch).join('');
      return [parseInt(h.slice(0, 2), 16) / 255, parseInt(h.slice(2, 4), 16) / 255, parseInt(h.slice(4, 6), 16) / 255, 1];
    }
    const m = s.match(/[\d.]+/g) || [0, 0, 0];
    return [m[0] / 255, m[1] / 255, m[2] / 255, m.length > 3 ? Number(m[3]) : 1];
  }

  // A plotly colour scale ([[0, c0], ..., [1, cK]]) sampled at ``steps`` points, linear in RGB
  // between its stops (as plotly.js interpolates colour scales).
  function sampleScale(scale, steps) {
    const stops = scale.map(([p, c]) => [Number(p), parseColour(c)]);
    const out = new Uint8Array(steps * 4);
    for (let i = 0; i < steps; i++) {
      const t = i / (steps - 1);
      let k = 0;
      while (k < stops.length - 2 && t > stops[k + 1][0]) k++;
      const [p0, c0] = stops[k], [p1, c1] = stops[Math.min(k + 1, stops.length - 1)];
      const f = p1 > p0 ? Math.min(Math.max((t - p0) / (p1 - p0), 0), 1) : 0;
      for (let j = 0; j < 3; j++) out[i * 4 + j] = Math.round((c0[j] + (c1[j] - c0[j]) * f) * 255);
      out[i * 4 + 3] = 255;
    }
    return out;
  }

  function compile(gl, type, src) {
    const s = gl.createShader(type);
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error('shader: ' + gl.getShaderInfoLog(s));
    return s;
  }

  class GLScatter {
    constructor(canvas) {
      const gl = canvas.getContext('webgl2', {antialias: false, alpha: true, premultipliedAlpha: true,
                                              preserveDrawingBuffer: false, depth: false, stencil: false});
      if (!gl) throw new Error('WebGL2 is not available');
      this.canvas = canvas;
      this.gl = gl;
      const prog = gl.createProgram();
      gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS));
      gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS));
      ATTRS.forEach((name, i) => gl.bindAttribLocation(prog, i, name));
      gl.linkProgram(prog);
      if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error('program: ' + gl.getProgramInfoLog(prog));
      this.prog = prog;
      this.u = {};
      for (const name of ['uView', 'uKind', 'uLo', 'uHi', 'uPal', 'uSteps', 'uMissing', 'uSize', 'uAlpha', 'uDimAlpha',
                          'uTrain', 'uSelOn']) this.u[name] = gl.getUniformLocation(prog, name);
      this.vao = gl.createVertexArray();
      this.columns = new Map();  // name -> {buf, type}
      this.index = gl.createBuffer();
      this.m = 0;
      this.pal = gl.createTexture();
      this.palWidth = 0;
      this.colour = {kind: 0, column: null, lo: 0, hi: 1, steps: LUT - 1, missing: [0.5, 0.5, 0.5, 1]};
      this.style = {size: 3, alpha: 1, dimAlpha: 0.2, train: -1};
      this.view = {x0: 0, x1: 1, y0: 0, y1: 1};
      this.selection = null;
      this.lost = false;
      canvas.addEventListener('webglcontextlost', (e) => { e.preventDefault(); this.lost = true; });
    }

    // One named array in its own GPU buffer (uploaded the first time only).
    column(name, arr) {
      const have = this.columns.get(name);
      if (have) return have;
      const gl = this.gl, type = GLTYPE(gl, arr);
      if (type === null) throw new Error(name + ': unsupported array type');
      const buf = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.bufferData(gl.ARRAY_BUFFER, arr, gl.STATIC_DRAW);
      const col = {buf, type, length: arr.length};
      this.columns.set(name, col);
      return col;
    }

    hasColumn(name) { return this.columns.has(name); }

    dropColumn(name) {
      const col = this.columns.get(name);
      if (col) { this.gl.deleteBuffer(col.buf); this.columns.delete(name); }
    }

    _bind(loc, name, constant) {
      const gl = this.gl, col = name && this.columns.get(name);
      if (col) {
        gl.bindBuffer(gl.ARRAY_BUFFER, col.buf);
        gl.enableVertexAttribArray(loc);
        gl.vertexAttribPointer(loc, 1, col.type, false, 0, 0);
      } else {
        gl.disableVertexAttribArray(loc);
        gl.vertexAttrib1f(loc, constant);
      }
    }

    // The rows to draw, in drawing order (Uint32Array; later rows are drawn above earlier ones).
    setOrder(rows) {
      const gl = this.gl;
      gl.bindVertexArray(this.vao);
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.index);
      gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, rows, gl.DYNAMIC_DRAW);
      gl.bindVertexArray(null);
      this.m = rows.length;
    }

    // Colour by a category column: ``colours[code]`` for each code.
    setCategorical(column, colours) {
      const rgba = new Uint8Array(Math.max(colours.length, 1) * 4);
      colours.forEach((c, i) => { parseColour(c).forEach((v, j) => { rgba[i * 4 + j] = Math.round(v * 255); }); });
      this._palette(rgba, Math.max(colours.length, 1));
      this.colour = Object.assign({}, this.colour, {kind: 0, column});
    }

    // Colour by a value column through a plotly colour scale over [lo, hi]; values below
    // MISSING_VALUE (no value) in ``missing``.
    setContinuous(column, scale, lo, hi, missing) {
      this._palette(sampleScale(scale, LUT), LUT);
      this.colour = {kind: 1, column, lo, hi, steps: LUT - 1, missing: parseColour(missing)};
    }

    _palette(rgba, width) {
      const gl = this.gl;
      gl.bindTexture(gl.TEXTURE_2D, this.pal);
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, width, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, rgba);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
      this.palWidth = width;
    }

    // A uint8 mask column (1: selected) or null for no selection.
    setSelection(name) { this.selection = name; }

    resize(width, height, ratio) {
      const w = Math.max(1, Math.round(width * ratio)), h = Math.max(1, Math.round(height * ratio));
      if (this.canvas.width !== w) this.canvas.width = w;
      if (this.canvas.height !== h) this.canvas.height = h;
      this.ratio = ratio;
    }

    // Draw now (synchronously: the canvas holds the frame until the browser presents it).
    render(scale = 1) {
      const gl = this.gl, c = this.colour, s = this.style, v = this.view, u = this.u;
      if (this.lost) return;
      gl.viewport(0, 0, this.canvas.width, this.canvas.height);
      gl.clearColor(0, 0, 0, 0);
      gl.clear(gl.COLOR_BUFFER_BIT);
      if (!this.m || !this.columns.has('x')) return;
      gl.useProgram(this.prog);
      gl.bindVertexArray(this.vao);
      this._bind(0, 'x', 0);
      this._bind(1, 'y', 0);
      this._bind(2, c.column, 0);
      this._bind(3, s.train >= 0 ? 'split' : null, -1);
      this._bind(4, this.selection, 1);
      gl.uniform4f(u.uView, v.x0, v.y0, 1 / (v.x1 - v.x0), 1 / (v.y1 - v.y0));
      gl.uniform1i(u.uKind, c.kind);
      gl.uniform1f(u.uLo, c.lo);
      gl.uniform1f(u.uHi, c.hi);
      gl.uniform1f(u.uSteps, c.steps);
      gl.uniform4fv(u.uMissing, c.missing);
      gl.uniform1f(u.uSize, s.size * (this.ratio || 1) * scale);
      gl.uniform1f(u.uAlpha, s.alpha);
      gl.uniform1f(u.uDimAlpha, s.dimAlpha);
      gl.uniform1f(u.uTrain, s.train);
      gl.uniform1f(u.uSelOn, this.selection ? 1 : 0);
      gl.activeTexture(gl.TEXTURE0);
      gl.bindTexture(gl.TEXTURE_2D, this.pal);
      gl.uniform1i(u.uPal, 0);
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
      gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.index);
      gl.drawElements(gl.POINTS, this.m, gl.UNSIGNED_INT, 0);
      gl.bindVertexArray(null);
    }
  }

  // The same renderer drawn by the CPU into a 2-D canvas, for browsers whose WebGL is a software
  // rasteriser (SwiftShader, llvmpipe: no GPU), where it is several times faster: SwiftShader
  // takes ~0.5 s to draw a million points even with a one-line shader, this ~0.1 s. Same
  // methods, state and drawing order; discs without antialiasing.
  class CPUScatter {
    constructor(canvas) {
      this.canvas = canvas;
      this.ctx = canvas.getContext('2d');
      this.columns = new Map();
      this.rows = new Uint32Array(0);
      this.m = 0;
      this.lut = new Uint32Array(1);
      this.colour = {kind: 0, column: null, lo: 0, hi: 1, steps: LUT - 1, missing: [0.5, 0.5, 0.5, 1]};
      this.style = {size: 3, alpha: 1, dimAlpha: 0.2, train: -1};
      this.view = {x0: 0, x1: 1, y0: 0, y1: 1};
      this.selection = null;
      this.backend = 'cpu';
      this.background = null;  // an opaque colour under the points (nothing drawn below them): faster
      this.pos = null;         // each drawn row's pixel, kept while the view, size and rows stay
      this.posKey = null;
    }

    column(name, arr) {
      if (!this.columns.has(name)) this.columns.set(name, {arr, length: arr.length});
      return this.columns.get(name);
    }

    hasColumn(name) { return this.columns.has(name); }
    dropColumn(name) { this.columns.delete(name); }
    setOrder(rows) { this.rows = rows; this.m = rows.length; }
    setSelection(name) { this.selection = name; }

    static packed(rgba) {  // [r, g, b, a] in 0..1 -> little-endian RGBA as one uint32
      return ((Math.round(rgba[3] * 255) << 24) | (Math.round(rgba[2] * 255) << 16) | (Math.round(rgba[1] * 255) << 8)
              | Math.round(rgba[0] * 255)) >>> 0;
    }

    setCategorical(column, colours) {
      this.lut = Uint32Array.from(colours.length ? colours : ['#888888'], (c) => CPUScatter.packed(parseColour(c)));
      this.colour = Object.assign({}, this.colour, {kind: 0, column});
    }

    setContinuous(column, scale, lo, hi, missing) {
      const rgba = sampleScale(scale, LUT);
      this.lut = new Uint32Array(rgba.buffer, 0, LUT).slice();
      this.colour = {kind: 1, column, lo, hi, steps: LUT - 1, missing: parseColour(missing)};
    }

    resize(width, height, ratio) {
      const w = Math.max(1, Math.round(width * ratio)), h = Math.max(1, Math.round(height * ratio));
      if (this.canvas.width !== w) this.canvas.width = w;
      if (this.canvas.height !== h) this.canvas.height = h;
      this.ratio = ratio;
    }

    // The pixels of a disc ``d`` pixels across (row stride ``w``): offsets of those it covers, and
    // of those it covers in part with their coverage (256ths; about a pixel of antialiasing, as
    // the GPU's shader draws its edge).
    static disc(d, w) {
      const r = d / 2, full = [], part = [], weight = [], hi = Math.ceil(r);
      for (let dy = -hi; dy <= hi; dy++) {
        for (let dx = -hi; dx <= hi; dx++) {
          const c = Math.min(Math.max(r + 0.5 - Math.hypot(dx, dy), 0), 1);
          if (c >= 0.99) full.push(dy * w + dx);
          else if (c > 0.05) { part.push(dy * w + dx); weight.push(Math.round(c * 256)); }
        }
      }
      return {offsets: Int32Array.from(full), part: Int32Array.from(part), weight: Int32Array.from(weight), reach: hi};
    }

    render(scale = 1) {
      const W = this.canvas.width, H = this.canvas.height;
      if (!this.image || this.image.width !== W || this.image.height !== H) {
        this.image = this.ctx.createImageData(W, H);
        this.pixels = new Uint32Array(this.image.data.buffer);
      }
      const px = this.pixels;
      if (this.background !== this.bgName) {  // any CSS colour, as the canvas reads it; a see-through one: none
        this.bgName = this.background;
        this.ctx.fillStyle = '#000';
        if (this.background) this.ctx.fillStyle = this.background;
        const rgba = parseColour(this.ctx.fillStyle);
        this.bg = this.background && rgba[3] >= 1 ? CPUScatter.packed(rgba) : 0;
      }
      px.fill(this.bg);
      const x = this.columns.get('x'), y = this.columns.get('y'), col = this.columns.get(this.colour.column);
      if (this.m && x && y && col) this._splat(px, W, H, x.arr, y.arr, col.arr, scale);
      if (!this.bg) this._straight(px);
      this.ctx.putImageData(this.image, 0, 0);
    }

    _straight(px) {
      for (let i = 0; i < px.length; i++) {  // blended premultiplied; ImageData holds straight alpha
        const p = px[i], a = p >>> 24;
        if (a === 0 || a === 255) continue;
        const f = 255 / a;
        px[i] = ((a << 24) | (Math.min(255, ((p >>> 16) & 255) * f) << 16) | (Math.min(255, ((p >>> 8) & 255) * f) << 8)
                 | Math.min(255, (p & 255) * f)) >>> 0;
      }
    }

    // Where each drawn row's disc is centred (a pixel index; -1: off the canvas), built again only
    // when the view, the canvas, the disc or the rows change (a recolour reuses it).
    _positions(W, H, xs, ys, reach) {
      const v = this.view, rows = this.rows, key = [v.x0, v.x1, v.y0, v.y1, W, H, reach, rows, xs, ys];
      if (this.posKey && key.every((k, i) => k === this.posKey[i])) return this.pos;
      const pos = this.pos && this.pos.length === rows.length ? this.pos : new Int32Array(rows.length);
      const sx = W / (v.x1 - v.x0), sy = H / (v.y1 - v.y0);
      for (let j = 0; j < rows.length; j++) {
        const r = rows[j], cx = Math.floor((xs[r] - v.x0) * sx), cy = Math.floor((v.y1 - ys[r]) * sy);
        pos[j] = cx >= reach && cy >= reach && cx < W - reach && cy < H - reach ? cy * W + cx : -1;
      }
      this.pos = pos; this.posKey = key;
      return pos;
    }

    _splat(px, W, H, xs, ys, vals, scale) {
      const c = this.colour, s = this.style, rows = this.rows, lut = this.lut;
      const {offsets, part, weight, reach} = CPUScatter.disc(Math.max(1, s.size * (this.ratio || 1) * scale), W);
      const pos = this._positions(W, H, xs, ys, reach), k = offsets.length, opaque = this.bg !== 0;
      const blend = opaque ? CPUScatter.blendOpaque : CPUScatter.blend;
      const split = s.train >= 0 && this.columns.get('split') ? this.columns.get('split').arr : null;
      const sel = this.selection && this.columns.get(this.selection) ? this.columns.get(this.selection).arr : null;
      const missing = CPUScatter.packed(c.missing), span = Math.max(c.hi - c.lo, 1e-30), steps = c.steps;
      const a0 = Math.round(s.alpha * 256), aDim = Math.round(s.dimAlpha * 256);
      for (let j = 0; j < rows.length; j++) {
        const o = pos[j];
        if (o < 0) continue;
        const r = rows[j];
        let rgba;
        if (c.kind === 0) rgba = lut[vals[r]];
        else {
          const t = vals[r];
          rgba = t < -1e37 ? missing : lut[Math.round(Math.min(Math.max((t - c.lo) / span, 0), 1) * steps)];
        }
        let a = split !== null && split[r] === s.train ? aDim : a0;
        if (sel !== null && !sel[r]) a = a >> 2;
        if (a >= 256) for (let q = 0; q < k; q++) px[o + offsets[q]] = rgba | 0xff000000;
        else for (let q = 0; q < k; q++) blend(px, o + offsets[q], rgba, a);
        for (let q = 0; q < part.length; q++) blend(px, o + part[q], rgba, (a * weight[q]) >> 8);
      }
    }

    // ``rgba`` at alpha ``a`` (256ths) over the premultiplied pixel ``i``.
    static blend(px, i, rgba, a) {
      const na = 256 - a, d = px[i];
      px[i] = ((((d >>> 24) * na + 255 * a) >> 8) << 24 | (((d >>> 16) & 255) * na + ((rgba >>> 16) & 255) * a) >> 8 << 16
               | (((d >>> 8) & 255) * na + ((rgba >>> 8) & 255) * a) >> 8 << 8 | ((d & 255) * na + (rgba & 255) * a) >> 8) >>> 0;
    }

    // The same over an opaque pixel (the background): the alpha stays 255.
    static blendOpaque(px, i, rgba, a) {
      const na = 256 - a, d = px[i];
      px[i] = (0xff000000 | (((d >>> 16) & 255) * na + ((rgba >>> 16) & 255) * a) >> 8 << 16
               | (((d >>> 8) & 255) * na + ((rgba >>> 8) & 255) * a) >> 8 << 8 | ((d & 255) * na + (rgba & 255) * a) >> 8) >>> 0;
    }

    readPixel(x, y) {  // CSS pixels of the plot -> [r, g, b, a] as drawn (over the background, if any)
      const r = this.ratio || 1, i = Math.round(y * r) * this.canvas.width + Math.round(x * r), p = this.pixels[i];
      return [p & 255, (p >>> 8) & 255, (p >>> 16) & 255, p >>> 24];
    }
  }

  // Wait until the GPU has drawn everything asked of it (a one-pixel read): benchmarks time the
  // frame a draw is in by the browser's animation frames, which a software GPU does not hold back.
  GLScatter.prototype.finish = function () {
    const gl = this.gl;
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
  };
  CPUScatter.prototype.finish = function () {};  // it draws as it is asked

  GLScatter.prototype.readPixel = function (x, y) {
    this.render();
    const gl = this.gl, r = this.ratio || 1, out = new Uint8Array(4);
    gl.readPixels(Math.round(x * r), Math.round(this.canvas.height - 1 - y * r), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, out);
    return Array.from(out);
  };

  // Whether this browser's WebGL is a software rasteriser (no GPU).
  function softwareGL() {
    try {
      const gl = document.createElement('canvas').getContext('webgl2');
      if (!gl) return true;
      const ext = gl.getExtension('WEBGL_debug_renderer_info');
      const name = String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
      const lose = gl.getExtension('WEBGL_lose_context');
      if (lose) lose.loseContext();
      return GLScatter.softwareName(name);
    } catch (e) {
      return true;
    }
  }

  // Whether a WebGL renderer's name (UNMASKED_RENDERER_WEBGL) is a software rasteriser.
  GLScatter.softwareName = (name) => /swiftshader|llvmpipe|softpipe|software/i.test(String(name));

  // The same question asked in a worker (a promise of true/false): the first WebGL context of a
  // page starts the browser's GPU process, ~0.25 s with SwiftShader, which the page's own thread
  // need not wait for; where a worker cannot tell, asked here.
  GLScatter.probeSoftware = function () {
    return new Promise((resolve) => {
      let worker = null, url = null, settled = false;
      const done = (software) => {
        if (settled) return;
        settled = true;
        if (worker) worker.terminate();
        if (url) URL.revokeObjectURL(url);
        resolve(software === undefined ? softwareGL() : software);
      };
      try {
        const src = "let gl = null; try { gl = new OffscreenCanvas(1, 1).getContext('webgl2'); } catch (e) {}\n" +
          "const ext = gl && gl.getExtension('WEBGL_debug_renderer_info');\n" +
          "postMessage(gl ? String(gl.getParameter(ext ? ext.UNMASKED_RENDERER_WEBGL : gl.RENDERER)) : null);";
        url = URL.createObjectURL(new Blob([src], {type: 'text/javascript'}));
        worker = new Worker(url);
        worker.onmessage = (e) => done(e.data === null || GLScatter.softwareName(e.data));
        worker.onerror = () => done(undefined);
        setTimeout(() => done(undefined), 10000);
      } catch (e) {
        done(undefined);
      }
    });
  };

  // A renderer on ``canvas``: "gpu" (WebGL2: the data in GPU buffers), "cpu", or "auto": the GPU
  // unless WebGL is a software rasteriser (or missing).
  GLScatter.create = function (canvas, backend = 'auto') {
    if (backend === 'gpu' || (backend !== 'cpu' && !softwareGL())) {
      const m = new GLScatter(canvas);
      m.backend = 'gpu';
      return m;
    }
    return new CPUScatter(canvas);
  };
  window.GLScatter = GLScatter;
  window.CPUScatter = CPUScatter;
  GLScatter.MISSING_VALUE = MISSING_VALUE;
  GLScatter.parseColour = parseColour;
  GLScatter.sampleScale = sampleScale;
  GLScatter.LUT = LUT;
})();

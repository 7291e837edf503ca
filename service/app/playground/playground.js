// gradbook playground: plain JavaScript, no libraries, no build step. It talks only to the
// service's own REST endpoints, by URLs relative to the page's (served at the service's root).
'use strict';

(() => {
  const TOKEN_KEY = 'gradbook-token';  // sessionStorage: the token lives as long as this tab
  const POLL_MS = 250;                 // between looks at a running training job
  const SMALL_INPUTS = 16;             // "small models": at most this many inputs get fields
  const GRADIENT_PARAMETERS = 5000;    // gradients are drawn for models up to this many weights
  const PEN_WIDTH = 24;                // canvas pixels (of 280): about a data-set stroke's share
  const SIDE = 8;                      // the digits data set's images are 8×8 ...
  const LEVELS = 16;                   // ... with intensities 0..16
  const INK = 10;                      // alpha (of 255) from which a pixel counts as ink

  const byId = (id) => document.getElementById(id);
  const byTestId = (id) => document.querySelector(`[data-testid="${id}"]`);

  const state = {
    models: [],            // the last GET /models
    versions: new Map(),   // name -> version at the last render, to highlight changes
    job: null,             // the training job being watched
  };

  // ---- talking to the service ------------------------------------------------------------

  class ServiceError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** One request; resolves to the JSON body, or throws a ServiceError worded by the service. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `token ${token}`;
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ServiceError(0, `the service did not answer (${err.message})`);
    }
    if (response.status === 401) showTokenBar();
    const text = await response.text();
    let payload = null;
    try {
      payload = text ? JSON.parse(text) : null;
    } catch {
      payload = null;  // not JSON: a proxy's page, say; the text is shown below
    }
    if (!response.ok) {
      const message = payload && payload.error && payload.error.message;
      throw new ServiceError(response.status, message || text.slice(0, 300) || response.statusText);
    }
    return payload;
  }

  const modelPath = (name, rest = '') => `models/${encodeURIComponent(name)}${rest}`;

  // ---- messages ----------------------------------------------------------------------------

  /** Show an error in the page's one error box, in the service's words. */
  function showError(action, err) {
    const box = byTestId('error');
    let text;
    if (err.status === 401) {
      const hasToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
      text = hasToken
        ? 'The service refused this token (401). Enter the right one under “Service token” above.'
        : 'This service needs a token (401). Enter it under “Service token” above.';
      text += ` The service said: ${err.message}`;
      byId('token').setAttribute('aria-invalid', 'true');
    } else {
      const status = err.status ? ` (HTTP ${err.status})` : '';
      text = `${action} failed${status}: ${err.message}`;
    }
    byId('error-text').textContent = text;
    box.dataset.status = String(err.status || 0);
    box.hidden = false;
  }

  function clearError() {
    const box = byTestId('error');
    box.hidden = true;
    byId('error-text').textContent = '';
    delete box.dataset.status;
  }

  // ---- messages beside a form's fields -------------------------------------------------------
  // A form's request that the service refuses (400, 404, 409, 413, …) gets the service's message
  // beside the field it names, that field marked (aria-invalid, aria-describedby); a message
  // that names none goes under the form's buttons. The service names the request's fields
  // (lr, sizes, epochs, X, …) as they are sent, usually first: the earliest one mentioned
  // wins. Not being reached (0), the token (401, 403), a full queue (429) or the service's
  // own trouble (5xx) are about no form and go to the banner at the top.

  /** Each form's fields: the words naming them in the service's messages, their controls, and
   *  the element the message goes after. */
  const FORM_FIELDS = {
    'create-form': [
      { words: ['name', 'named'], name: 'name' },
      { words: ['sizes'], name: 'sizes' },
      { words: ['activation'], name: 'activation' },
      { words: ['loss'], name: 'loss' },
      { words: ['bias'], name: 'bias' },
      { words: ['seed'], name: 'seed' },
      { words: ['lr', 'learning rate'], name: 'lr' },
      { words: ['epochs'], name: 'epochs' },
      { words: ['batch_size', 'batch size'], name: 'batch_size' },
    ],
    'train-form': [
      { words: ['data', 'data set'], name: 'data' },
      { words: ['epochs'], name: 'epochs' },
      { words: ['lr', 'learning rate'], name: 'lr' },
      { words: ['batch_size', 'batch size'], name: 'batch_size' },
      { words: ['model'], name: 'model' },
    ],
    'small-form': [
      { words: ['x'], group: 'small-inputs' },
      { words: ['model'], id: 'small-model' },
    ],
    'gradients-form': [
      { words: ['X'], group: 'gradients-x' },
      { words: ['Y'], group: 'gradients-y' },
      { words: ['model'], id: 'gradients-model' },
    ],
  };

  /** Errors that concern the page or the service rather than what a form holds. */
  const forTheBanner = (err) =>
    !err.status || err.status === 401 || err.status === 403 || err.status === 429 ||
    err.status >= 500;

  const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  /** Where in ``message`` the field is first named (case matters: x and X are two fields), or
   *  Infinity. */
  function mention(message, words) {
    let first = Infinity;
    for (const word of words) {
      const found = new RegExp(`(^|[^\\w])${escapeRegExp(word)}(?![\\w])`).exec(message);
      if (found) first = Math.min(first, found.index + found[1].length);
    }
    return first;
  }

  /** The controls of ``field`` in ``form`` (a group's inputs, or one control) and the element
   *  its message goes after. */
  function fieldControls(form, field) {
    if (field.group) {
      const container = byId(field.group);
      return { controls: [...container.querySelectorAll('input')],
               anchor: container.closest('fieldset') || container };
    }
    const control = field.id ? byId(field.id) : form.elements[field.name];
    if (!control) return { controls: [], anchor: null };
    return { controls: [control], anchor: control.closest('label') || control };
  }

  /** The field ``message`` is about, as {controls, anchor}, or null for none. */
  function fieldOf(form, message) {
    let best = null, at = Infinity;
    for (const field of FORM_FIELDS[form.id] || []) {
      const where = mention(message, field.words);
      if (where < at) {
        const found = fieldControls(form, field);
        if (found.anchor && found.controls.length) {
          best = found;
          at = where;
        }
      }
    }
    if (!best) return null;
    // In a group of number fields, the one holding the value the message quotes ("got 'zero'").
    const quoted = /got '([^']*)'/.exec(message);
    if (quoted && best.controls.length > 1) {
      const holding = best.controls.filter((input) => input.value.trim() === quoted[1]);
      if (holding.length) best.controls = holding;
    }
    return best;
  }

  /** The service's refusal of ``form``'s request: beside the field it names, else under the
   *  form's buttons; the banner for errors no field can fix (see forTheBanner). With ``follow``
   *  (the user has just sent the form) the field gets the focus and the message is scrolled
   *  into view; a job that fails later moves neither. */
  function showFormError(form, action, err, { follow = true } = {}) {
    clearFormErrors(form);
    if (forTheBanner(err)) {
      showError(action, err);
      return;
    }
    const field = fieldOf(form, err.message);
    const message = document.createElement('p');
    message.className = 'field-error';
    message.id = `${form.id}-error`;
    message.dataset.testid = 'field-error';
    message.setAttribute('role', 'alert');
    const status = err.status ? ` (HTTP ${err.status})` : '';
    message.textContent = field ? err.message : `${action} failed${status}: ${err.message}`;
    if (field) {
      field.anchor.after(message);
      for (const control of field.controls) {
        control.setAttribute('aria-invalid', 'true');
        describedBy(control, message.id, true);
        control.dataset.error = message.id;
      }
      if (follow) field.controls[0].focus({ preventScroll: true });
    } else {
      const submit = form.querySelector('button[type="submit"]');
      const buttons = submit.closest('.buttons') || submit;
      buttons.after(message);
      describedBy(submit, message.id, true);
      submit.dataset.error = message.id;
    }
    if (follow) message.scrollIntoView({ block: 'nearest' });
  }

  /** Add ``id`` to (or take it from) ``element``'s aria-describedby. */
  function describedBy(element, id, add) {
    const ids = (element.getAttribute('aria-describedby') || '').split(/\s+/)
      .filter((each) => each && each !== id);
    if (add) ids.push(id);
    if (ids.length) element.setAttribute('aria-describedby', ids.join(' '));
    else element.removeAttribute('aria-describedby');
  }

  /** Take the message ``id`` off the page and the marks off its field. */
  function clearFieldError(id) {
    for (const element of document.querySelectorAll(`[data-error="${id}"]`)) {
      element.removeAttribute('aria-invalid');
      describedBy(element, id, false);
      delete element.dataset.error;
    }
    const message = byId(id);
    if (message) message.remove();
  }

  const clearFormErrors = (form) => clearFieldError(`${form.id}-error`);

  /** Editing a marked field takes its mark and message away (a message under the buttons
   *  stays until the form is sent again). */
  function initFormErrors() {
    for (const id of Object.keys(FORM_FIELDS)) {
      const form = byId(id);
      const edited = (event) => {
        const target = event.target;
        if (target.getAttribute && target.getAttribute('aria-invalid') === 'true' &&
            target.dataset.error) {
          clearFieldError(target.dataset.error);
        }
      };
      form.addEventListener('input', edited);
      form.addEventListener('change', edited);
    }
  }

  function say(id, text) {
    byId(id).textContent = text;
  }

  /** A number in a few significant digits, in exponent form when very small or large. */
  function fmt(x) {
    if (typeof x !== 'number' || !Number.isFinite(x)) return String(x);
    const size = Math.abs(x);
    if (size !== 0 && (size < 1e-3 || size >= 1e5)) return x.toExponential(2);
    return String(Number(x.toPrecision(4)));
  }

  /** A form field's text as JSON: blank -> undefined (left out), a number -> that number,
   *  anything else as typed, so that the service judges it and says what is wrong. */
  function fieldValue(text, { nullWords = [] } = {}) {
    const trimmed = text.trim();
    if (trimmed === '') return undefined;
    if (nullWords.includes(trimmed.toLowerCase())) return null;
    if (/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(trimmed)) return Number(trimmed);
    return trimmed;
  }

  /** ``body`` without its undefined fields. */
  function defined(body) {
    return Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined));
  }

  // ---- the token -----------------------------------------------------------------------------

  /** The token bar is for services that ask for a token: shown once one answers 401, or when
   *  this tab holds a token already. */
  function showTokenBar() {
    byId('token-form').hidden = false;
  }

  function initToken() {
    const input = byId('token');
    input.value = sessionStorage.getItem(TOKEN_KEY) || '';
    if (input.value) showTokenBar();
    byId('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      input.removeAttribute('aria-invalid');
      clearError();
      refreshModels();
    });
    byId('token-forget').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      input.value = '';
      input.removeAttribute('aria-invalid');
      clearError();
      refreshModels();
    });
    byId('error-dismiss').addEventListener('click', clearError);
  }

  // ---- models ------------------------------------------------------------------------------

  const findModel = (name) => state.models.find((m) => m.name === name && !m.error);
  const parameterCount = (sizes) =>
    sizes.slice(1).reduce((sum, d, k) => sum + (sizes[k] + 1) * d, 0);

  /** GET /models, then every part of the page that lists or depends on the models. */
  async function refreshModels() {
    try {
      const { models } = await api('GET', 'models');
      state.models = models;
      byId('token').removeAttribute('aria-invalid');
    } catch (err) {
      state.models = [];
      showError('Listing the models', err);
    }
    renderModelList();
    fillSelects();
    const trained = findModel(byId('train-model').value);
    showVersion(trained ? trained.version : null);
  }

  function formatMetrics(metrics) {
    if (!metrics || Object.keys(metrics).length === 0) return 'untrained';
    const parts = [];
    if ('held_out_accuracy' in metrics) {
      parts.push(`held-out accuracy ${(100 * metrics.held_out_accuracy).toFixed(1)} %`);
    }
    if ('training_loss' in metrics) parts.push(`training loss ${fmt(metrics.training_loss)}`);
    if (metrics.data) parts.push(`on ${metrics.data}`);
    const known = ['held_out_accuracy', 'training_loss', 'data'];
    for (const [key, value] of Object.entries(metrics)) {
      if (!known.includes(key) && !key.endsWith('_examples')) {
        parts.push(`${key.replace(/_/g, ' ')} ${fmt(value)}`);
      }
    }
    return parts.join(' · ');
  }

  function cell(row, text, label) {
    const td = row.insertCell();
    td.textContent = text;
    if (label) td.dataset.label = label;
    return td;
  }

  function renderModelList() {
    const body = byTestId('model-list');
    body.replaceChildren();
    for (const model of state.models) {
      const row = body.insertRow();
      row.dataset.model = model.name;
      cell(row, model.name, 'Name').classList.add('name');
      if (model.error) {
        const td = cell(row, `cannot be read: ${model.error}`);
        td.colSpan = 6;
        continue;
      }
      cell(row, model.sizes.join('–'), 'Layer sizes');
      cell(row, model.activation, 'Activation');
      cell(row, model.loss + (model.bias ? ' + bias' : ''), 'Loss');
      cell(row, String(model.version), 'Version').classList.add('version');
      cell(row, formatMetrics(model.metrics), 'Metrics').classList.add('metrics');
      const actions = row.insertCell();
      actions.className = 'actions';
      actions.append(
        actionButton('Reset', model.name, () => resetModel(model.name)),
        actionButton('Delete', model.name, () => deleteModel(model.name)),
      );
      const before = state.versions.get(model.name);
      if (before !== undefined && before !== model.version) row.classList.add('changed');
      state.versions.set(model.name, model.version);
    }
  }

  function actionButton(label, name, onClick) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = label;
    button.setAttribute('aria-label', `${label} model ${name}`);
    button.addEventListener('click', onClick);
    return button;
  }

  /** A modal yes/no question (a <dialog>: Escape and Cancel say no). */
  function confirmAction(question, confirmLabel) {
    const dialog = byId('confirm');
    byId('confirm-text').textContent = question;
    byId('confirm-ok').textContent = confirmLabel;
    dialog.returnValue = '';
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'),
        { once: true });
    });
  }

  async function resetModel(name) {
    const question = `Reset model “${name}” to fresh random weights? Its training is lost ` +
      '(the version number goes up).';
    if (!(await confirmAction(question, 'Reset'))) return;
    clearError();
    try {
      const model = await api('POST', modelPath(name, '/reset'), {});
      say('models-status', `Reset ${name}: now version ${model.version}.`);
    } catch (err) {
      showError(`Resetting ${name}`, err);
    }
    await refreshModels();
  }

  async function deleteModel(name) {
    if (!(await confirmAction(`Delete model “${name}”? This cannot be undone.`, 'Delete'))) return;
    clearError();
    try {
      await api('DELETE', modelPath(name));
      say('models-status', `Deleted ${name}.`);
    } catch (err) {
      showError(`Deleting ${name}`, err);
    }
    await refreshModels();
  }

  function initCreateForm() {
    const form = byId('create-form');
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearError();
      const field = (name) => form.elements[name].value;
      const sizes = field('sizes').trim();
      const body = defined({
        name: field('name').trim(),
        sizes: sizes === '' ? undefined : sizes.split(/[\s,]+/).filter(Boolean).map(
          (part) => fieldValue(part)),
        activation: field('activation'),
        loss: field('loss'),
        bias: form.elements.bias.checked,
        seed: fieldValue(field('seed')),
        lr: fieldValue(field('lr')),
        epochs: fieldValue(field('epochs')),
        batch_size: fieldValue(field('batch_size'), { nullWords: ['full', 'null'] }),
      });
      let model;
      try {
        model = await api('POST', 'models', body);
      } catch (err) {
        showFormError(form, 'Creating the model', err);
        return;
      }
      clearFormErrors(form);
      say('models-status', `Created ${model.name} (version ${model.version}, untrained).`);
      await refreshModels();
      byId('train-model').value = model.name;
      onTrainModelChange();
    });
  }

  /** Put the models that fit each section into its <select>, keeping the current choice. */
  function fillSelects() {
    const usable = state.models.filter((m) => !m.error);
    fillSelect('digit-model', usable.filter((m) => m.sizes[0] === SIDE * SIDE), 'digits');
    fillSelect('small-model', usable.filter((m) => m.sizes[0] <= SMALL_INPUTS), 'xor');
    fillSelect('gradients-model', usable.filter(
      (m) => m.sizes[0] <= SMALL_INPUTS && parameterCount(m.sizes) <= GRADIENT_PARAMETERS), 'xor');
    fillSelect('train-model', usable, 'xor');
  }

  function fillSelect(id, models, preferred) {
    const select = byId(id);
    const previous = select.value;
    select.replaceChildren(...models.map((m) => new Option(`${m.name} (${m.sizes.join('–')})`,
      m.name)));
    const names = models.map((m) => m.name);
    select.value = names.includes(previous) ? previous
      : names.includes(preferred) ? preferred : (names[0] || '');
    // Each section rebuilds what depends on the choice when it is another model (or the same
    // name with other layer sizes: deleted and created again).
    if (selectionKey(select) !== select.dataset.key) select.dispatchEvent(new Event('change'));
  }

  const selectionKey = (select) => {
    const model = findModel(select.value);
    return model ? `${model.name} ${model.sizes.join(',')}` : '';
  };

  /** Remember what each model <select> was last rebuilt for (see fillSelect). */
  function initSelects() {
    for (const id of ['digit-model', 'small-model', 'gradients-model', 'train-model']) {
      const select = byId(id);
      select.addEventListener('change', () => { select.dataset.key = selectionKey(select); });
    }
  }

  // ---- digits: drawing -----------------------------------------------------------------------
  // Pointer events cover mouse, pen and touch alike. After every change the canvas gets an
  // 'input' event, and that is all the rest listens to (a test may draw on the canvas's 2D
  // context directly and dispatch 'input' itself).

  function initDrawing() {
    const canvas = byTestId('digit-canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    let last = null;  // the previous point of the stroke being drawn

    const point = (event) => {
      const box = canvas.getBoundingClientRect();  // CSS size may differ from the 280×280 pixels
      return {
        x: ((event.clientX - box.left) * canvas.width) / box.width,
        y: ((event.clientY - box.top) * canvas.height) / box.height,
      };
    };
    const changed = () => canvas.dispatchEvent(new Event('input'));

    canvas.addEventListener('pointerdown', (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      last = point(event);
      dot(ctx, last);
      changed();
    });
    canvas.addEventListener('pointermove', (event) => {
      if (!last) return;
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
      for (const each of events.length ? events : [event]) {
        const next = point(each);
        line(ctx, last, next);
        last = next;
      }
      changed();
    });
    const end = () => { last = null; };
    canvas.addEventListener('pointerup', end);
    canvas.addEventListener('pointercancel', end);
    byId('digit-clear').addEventListener('click', () => {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      changed();
    });
  }

  function dot(ctx, p) {
    ctx.fillStyle = '#000';
    ctx.beginPath();
    ctx.arc(p.x, p.y, PEN_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function line(ctx, a, b) {
    ctx.strokeStyle = '#000';
    ctx.lineWidth = PEN_WIDTH;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  // ---- digits: the drawing as the data set's input -------------------------------------------
  // This mirrors how the digits data set (UCI optdigits, sklearn's load_digits) was made from
  // scanned binary images: the digit's bounding box was scaled, keeping its aspect ratio, so
  // that its longer side fills a 32×32 box, centred in that box, and the box was cut into
  // 4×4 blocks; each block's value is the number of its 16 pixels that are ink, 0..16. (In the
  // data every digit spans all 8 rows, and is centred by its bounding box.) Here the ink is the
  // canvas's alpha, so a block's value is 16 × its mean ink, rounded: the anti-aliased count.

  /** The smallest rectangle of pixels holding all the ink, or null for a blank canvas. */
  function inkBox(image) {
    const { width, height, data } = image;
    let x0 = width, y0 = height, x1 = -1, y1 = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (data[(y * width + x) * 4 + 3] >= INK) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    return x1 < 0 ? null : { x0, y0, x1: x1 + 1, y1: y1 + 1 };
  }

  /** The pixels overlapping [start, start + size) along one axis, each with its overlap. */
  function overlaps(start, size, limit) {
    const end = start + size;
    const spans = [];
    for (let p = Math.max(0, Math.floor(start)); p < Math.min(limit, Math.ceil(end)); p++) {
      const overlap = Math.min(p + 1, end) - Math.max(p, start);
      if (overlap > 0) spans.push([p, overlap]);
    }
    return spans;
  }

  /** Mean ink (0..1) of the square [x, x + size) × [y, y + size); off the canvas is blank. */
  function meanInk(image, x, y, size) {
    const { width, height, data } = image;
    const columns = overlaps(x, size, width);
    let sum = 0;
    for (const [py, wy] of overlaps(y, size, height)) {
      for (const [px, wx] of columns) sum += data[(py * width + px) * 4 + 3] * wx * wy;
    }
    return sum / (255 * size * size);
  }

  /** The 64 intensities (0..16, row by row) of the drawing, or null when nothing is drawn. */
  function digitInput(image) {
    const box = inkBox(image);
    if (!box) return null;
    const cellSize = Math.max(box.x1 - box.x0, box.y1 - box.y0) / SIDE;  // longer side fills
    const left = (box.x0 + box.x1 - SIDE * cellSize) / 2;                   // centred
    const top = (box.y0 + box.y1 - SIDE * cellSize) / 2;
    const values = [];
    for (let row = 0; row < SIDE; row++) {
      for (let col = 0; col < SIDE; col++) {
        const ink = meanInk(image, left + col * cellSize, top + row * cellSize, cellSize);
        values.push(Math.min(LEVELS, Math.round(LEVELS * ink)));
      }
    }
    return values;
  }

  // ---- digits: preview and prediction, as you draw -------------------------------------------

  const digits = {
    revision: 0,       // counts the drawing's changes
    values: null,      // its 8×8 input
    frame: false,      // an update is scheduled for the next animation frame
    inFlight: false,   // a prediction request is on its way
    queued: null,      // the newest input waiting for that request to end
  };

  function initDigits() {
    const canvas = byTestId('digit-canvas');
    canvas.addEventListener('input', () => {
      // Counted at once, so the prediction shown can always be matched with the drawing it is
      // for (its data-revision); but strokes come faster than frames: read the canvas at most
      // once a frame.
      digits.revision += 1;
      canvas.dataset.revision = String(digits.revision);
      if (digits.frame) return;
      digits.frame = true;
      requestAnimationFrame(() => {
        digits.frame = false;
        updateDigit();
      });
    });
    byId('digit-model').addEventListener('change', () => {
      if (digits.values) queuePrediction(digits.revision, digits.values);
    });
    renderPreview(null);
    renderBars(null);
  }

  function updateDigit() {
    const canvas = byTestId('digit-canvas');
    const image = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    digits.values = digitInput(image);
    renderPreview(digits.values);
    if (digits.values) {
      queuePrediction(digits.revision, digits.values);
    } else {  // blank: nothing to classify
      digits.queued = null;
      renderPrediction(null, digits.revision);
    }
  }

  function renderPreview(values) {
    const grid = byTestId('digit-input');
    grid.replaceChildren();
    const shown = values || new Array(SIDE * SIDE).fill(0);
    for (const value of shown) {
      const span = document.createElement('span');
      const shade = Math.round(255 * (1 - value / LEVELS));
      span.style.background = `rgb(${shade} ${shade} ${shade})`;
      span.style.color = value > LEVELS / 2 ? '#fff' : '#555';
      span.textContent = value ? String(value) : '';
      grid.append(span);
    }
    grid.dataset.values = values ? values.join(',') : '';
  }

  /** Predict ``values``; while a request is out, only the newest input waits for its turn. */
  function queuePrediction(revision, values) {
    digits.queued = { revision, values };
    if (!digits.inFlight) sendPrediction();
  }

  async function sendPrediction() {
    const next = digits.queued;
    const model = byId('digit-model').value;
    digits.queued = null;
    if (!next || !model) return;
    digits.inFlight = true;
    try {
      // The model was trained on intensity / 16 (gradbook.datasets.digits), so send that.
      const x = next.values.map((v) => v / LEVELS);
      const result = await api('POST', modelPath(model, '/predict'), { x });
      renderPrediction(result, next.revision);
    } catch (err) {
      showError(`Classifying the drawing with ${model}`, err);
      renderPrediction(null, next.revision, '?');
    } finally {
      digits.inFlight = false;
      if (digits.queued) sendPrediction();
    }
  }

  function renderPrediction(result, revision, blank = '–') {
    const output = byTestId('prediction');
    const outputs = result ? result.output : null;
    const best = outputs ? ('class' in result ? result.class : argmax(outputs)) : null;
    output.textContent = best === null ? blank : String(best);
    output.dataset.class = best === null ? '' : String(best);
    output.dataset.revision = String(revision);
    renderBars(outputs, best);
  }

  const argmax = (xs) => xs.reduce((best, x, i) => (x > xs[best] ? i : best), 0);

  /** The bar chart of the outputs (a classifier's are the ten softmax probabilities). */
  function renderBars(outputs, best) {
    const list = byTestId('probabilities');
    list.replaceChildren();
    const shown = outputs || new Array(10).fill(0);
    shown.forEach((p, k) => {
      const item = document.createElement('li');
      item.dataset.class = String(k);
      item.dataset.probability = String(p);
      if (outputs && k === best) item.classList.add('best');
      const label = document.createElement('span');
      label.textContent = String(k);
      const track = document.createElement('span');
      track.className = 'track';
      const fill = document.createElement('span');
      fill.className = 'fill';
      fill.style.display = 'block';
      fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
      track.append(fill);
      const value = document.createElement('span');
      value.className = 'value';
      value.textContent = outputs ? `${(100 * p).toFixed(1)}\u00a0%` : '';
      item.append(label, track, value);
      item.setAttribute('aria-label', `${k}: ${(100 * p).toFixed(1)} percent`);
      list.append(item);
    });
  }

  // ---- number fields (small models, gradients) -----------------------------------------------

  /** ``count`` labelled text fields for numbers in ``container`` (kept when the count is). */
  function numberFields(container, prefix, count, defaults = []) {
    if (container.children.length === count && container.dataset.prefix === prefix) return;
    container.replaceChildren();
    container.dataset.prefix = prefix;
    for (let i = 0; i < count; i++) {
      const label = document.createElement('label');
      label.append(`${prefix}${i + 1}`);
      const input = document.createElement('input');
      input.inputMode = 'decimal';
      input.value = String(defaults[i] ?? 0);
      input.name = `${prefix}${i + 1}`;
      label.append(input);
      container.append(label);
    }
  }

  const numbersOf = (container) =>
    [...container.querySelectorAll('input')].map((input) => fieldValue(input.value) ?? '');

  // ---- small models ----------------------------------------------------------------------------

  function initSmall() {
    const select = byId('small-model');
    select.addEventListener('change', () => {
      const model = findModel(select.value);
      const container = byId('small-inputs');
      if (!model) {
        container.replaceChildren();
        return;
      }
      numberFields(container, 'x', model.sizes[0]);
      byId('small-output').textContent = '–';
      clearFormErrors(byId('small-form'));
    });
    byId('small-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      clearError();
      const form = event.currentTarget;
      const name = select.value;
      if (!name) return;
      byId('small-output').textContent = '…';
      try {
        const result = await api('POST', modelPath(name, '/predict'),
          { x: numbersOf(byId('small-inputs')) });
        const values = result.output.map(fmt).join(', ');
        byId('small-output').textContent =
          'class' in result ? `class ${result.class} · [${values}]` : `[${values}]`;
        clearFormErrors(form);
      } catch (err) {
        byId('small-output').textContent = '–';
        showFormError(form, `Predicting with ${name}`, err);
      }
    });
  }

  // ---- training ------------------------------------------------------------------------------

  function initTrain() {
    byId('train-model').addEventListener('change', onTrainModelChange);
    byId('train-form').addEventListener('submit', (event) => {
      event.preventDefault();
      startTraining();
    });
    byId('train-cancel').addEventListener('click', cancelTraining);
    window.addEventListener('resize', () => drawLossChart());
  }

  /** The chosen model's version, its default data set and its hyperparameters as hints. */
  async function onTrainModelChange() {
    const name = byId('train-model').value;
    const model = findModel(name);
    showVersion(model ? model.version : null);
    if (!model) return;
    const data = byId('train-data');
    if (model.sizes[0] === 3) data.value = 'xor';
    if (model.sizes[0] === SIDE * SIDE) data.value = 'digits';
    try {
      const details = await api('GET', modelPath(name));
      if (byId('train-model').value !== name) return;  // chosen another meanwhile
      const h = details.hyperparameters || {};
      byId('train-epochs').placeholder = h.epochs === undefined ? '' : String(h.epochs);
      byId('train-lr').placeholder = h.lr === undefined ? '' : String(h.lr);
      byId('train-batch').placeholder = h.batch_size === null ? 'full'
        : h.batch_size === undefined ? '' : String(h.batch_size);
    } catch (err) {
      showError(`Reading ${name}`, err);
    }
  }

  function showVersion(version) {
    const output = byTestId('version');
    const before = output.dataset.version;
    output.textContent = version === null ? '–' : String(version);
    output.dataset.version = version === null ? '' : String(version);
    if (before && version !== null && String(version) !== before) {
      output.classList.remove('bumped');
      void output.offsetWidth;  // restart the highlight animation
      output.classList.add('bumped');
    }
  }

  async function startTraining() {
    clearError();
    const name = byId('train-model').value;
    if (!name || state.job) return;
    const body = defined({
      data: byId('train-data').value,
      epochs: fieldValue(byId('train-epochs').value),
      lr: fieldValue(byId('train-lr').value),
      batch_size: fieldValue(byId('train-batch').value, { nullWords: ['full', 'null'] }),
      wait: false,
    });
    setTraining(true);
    const form = byId('train-form');
    try {
      const job = await api('POST', modelPath(name, '/train'), body);
      clearFormErrors(form);
      state.job = job;
      say('train-status', `Job ${job.id.slice(0, 8)}… ${job.state}.`);
      drawLossChart(job);
      setTimeout(pollJob, POLL_MS);
    } catch (err) {
      setTraining(false);
      say('train-status', '');
      showFormError(form, `Training ${name}`, err);
    }
  }

  function setTraining(running) {
    byTestId('train-button').disabled = running;
    byId('train-cancel').disabled = !running;
  }

  /** Follow the job until it ends; the loss curve grows with each look. */
  async function pollJob() {
    const watched = state.job;
    if (!watched) return;
    let job;
    try {
      job = await api('GET', `jobs/${encodeURIComponent(watched.id)}`);
    } catch (err) {
      showError('Following the training job', err);
      if (err.status !== 401 && err.status !== 404) setTimeout(pollJob, 4 * POLL_MS);
      else finishJob(null);
      return;
    }
    state.job = job;
    drawLossChart(job);
    const last = job.losses.length ? `, loss ${fmt(job.losses[job.losses.length - 1])}` : '';
    say('train-status', `${job.model}: ${job.state}, epoch ${job.epoch} of ${job.epochs}${last}.`);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) finishJob(job);
    else setTimeout(pollJob, POLL_MS);
  }

  async function finishJob(job) {
    state.job = null;
    setTraining(false);
    if (!job) return;
    if (job.state === 'succeeded') {
      const first = job.losses[0], last = job.losses[job.losses.length - 1];
      say('train-status', `${job.model}: trained ${job.epochs} epochs, loss ${fmt(first)} → ` +
        `${fmt(last)}; committed as version ${job.version}.`);
    } else if (job.state === 'failed') {
      const error = job.error || { status: 0, message: 'no reason given' };
      showFormError(byId('train-form'), `Training ${job.model}`,
        new ServiceError(error.status, error.message), { follow: false });
    } else {
      say('train-status', `${job.model}: cancelled after epoch ${job.epoch}; nothing committed.`);
    }
    await refreshModels();
    if (job.state === 'succeeded' && byId('train-model').value === job.model) {
      showVersion(job.version);
    }
  }

  async function cancelTraining() {
    const job = state.job;
    if (!job) return;
    try {
      // 200: it was queued and is cancelled now; 202: it runs and stops after this epoch (the
      // polling sees it end); 409: it has ended already (the polling sees how).
      const answer = await api('POST', `jobs/${encodeURIComponent(job.id)}/cancel`);
      say('train-status', answer && answer.state === 'cancelled' ? 'Cancelled.' : 'Cancelling…');
    } catch (err) {
      showFormError(byId('train-form'), 'Cancelling the training', err);
    }
  }

  let chartJob = null;  // the job last drawn, to redraw on resize

  /** The job's losses so far against the epoch, on axes sized for all its epochs. */
  function drawLossChart(job = chartJob) {
    const canvas = byTestId('loss-chart');
    chartJob = job;
    const losses = job ? job.losses : [];
    canvas.dataset.points = String(losses.length);
    canvas.dataset.state = job ? job.state : '';
    canvas.dataset.job = job ? job.id : '';
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 600, height = canvas.clientHeight || 220;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const ctx = canvas.getContext('2d');
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const plot = { left: 58, right: width - 12, top: 12, bottom: height - 28 };
    ctx.strokeStyle = '#8a959e';
    ctx.lineWidth = 1;
    ctx.strokeRect(plot.left, plot.top, plot.right - plot.left, plot.bottom - plot.top);
    ctx.fillStyle = '#5b6670';
    ctx.font = '12px system-ui, sans-serif';
    ctx.textAlign = 'center';
    ctx.fillText('epoch', (plot.left + plot.right) / 2, height - 6);
    const finite = losses.filter((x) => typeof x === 'number' && Number.isFinite(x));
    if (!job || finite.length === 0) {
      ctx.fillText(job ? 'waiting for the first epochs…' : 'train a model to see its loss',
        (plot.left + plot.right) / 2, (plot.top + plot.bottom) / 2);
      return;
    }
    let low = Math.min(...finite), high = Math.max(...finite);
    if (high - low < 1e-12) { low -= 0.5 * Math.abs(low) || 0.5; high += 0.5 * Math.abs(high) || 0.5; }
    const epochs = Math.max(job.epochs, losses.length, 2);
    const x = (i) => plot.left + ((plot.right - plot.left) * i) / (epochs - 1);
    const y = (v) => plot.bottom - ((plot.bottom - plot.top) * (v - low)) / (high - low);
    ctx.textAlign = 'left';
    ctx.fillText('1', plot.left, plot.bottom + 14);
    ctx.textAlign = 'right';
    ctx.fillText(String(epochs), plot.right, plot.bottom + 14);
    ctx.fillText(fmt(high), plot.left - 4, plot.top + 10);
    ctx.fillText(fmt(low), plot.left - 4, plot.bottom);
    ctx.save();
    ctx.translate(14, (plot.top + plot.bottom) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = 'center';
    ctx.fillText('loss', 0, 0);
    ctx.restore();
    ctx.strokeStyle = '#1f5fa8';
    ctx.lineWidth = 2;
    ctx.beginPath();
    let pen = false;  // a missing (non-finite) loss breaks the line
    losses.forEach((v, i) => {
      if (typeof v !== 'number' || !Number.isFinite(v)) { pen = false; return; }
      if (pen) ctx.lineTo(x(i), y(v)); else ctx.moveTo(x(i), y(v));
      pen = true;
    });
    ctx.stroke();
  }

  // ---- gradients -------------------------------------------------------------------------------

  function initGradients() {
    const select = byId('gradients-model');
    select.addEventListener('change', () => {
      const model = findModel(select.value);
      const xs = byId('gradients-x'), ys = byId('gradients-y');
      if (!model) {
        xs.replaceChildren();
        ys.replaceChildren();
        return;
      }
      numberFields(xs, 'x', model.sizes[0], model.sizes[0] === 3 ? [1, 0, 1] : []);
      const out = model.sizes[model.sizes.length - 1];
      if (model.classifier) {
        byId('gradients-y-legend').textContent = 'Target class';
        numberFields(ys, 'class', 1);
      } else {
        byId('gradients-y-legend').textContent = 'Target y';
        numberFields(ys, 'y', out, out === 1 ? [1] : []);
      }
      clearFormErrors(byId('gradients-form'));
    });
    byId('gradients-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      clearError();
      const form = event.currentTarget;
      const model = findModel(select.value);
      if (!model) return;
      const x = numbersOf(byId('gradients-x'));
      const y = numbersOf(byId('gradients-y'));
      const Y = model.classifier ? y : [y];  // class labels [k], or a row of targets
      try {
        const result = await api('POST', modelPath(model.name, '/gradients'), { X: [x], Y });
        say('gradients-status', `${model.name}, version ${result.version}: loss ${fmt(result.loss)}`);
        renderGradients(result.gradients);
        clearFormErrors(form);
      } catch (err) {
        byId('gradients-maps').replaceChildren();
        say('gradients-status', '');
        showFormError(form, `Gradients of ${model.name}`, err);
      }
    });
  }

  function renderGradients(gradients) {
    const maps = byId('gradients-maps');
    maps.replaceChildren();
    for (const [name, value] of Object.entries(gradients)) {
      const matrix = Array.isArray(value[0]) ? value : [value];  // a bias is one row
      maps.append(heatmap(name, matrix));
    }
  }

  /** White for 0, red for positive, blue for negative, full colour at the largest |value|. */
  function diverging(value, scale) {
    const t = scale > 0 ? Math.max(-1, Math.min(1, value / scale)) : 0;
    const [r, g, b] = t >= 0 ? [178, 24, 43] : [33, 102, 172];
    const mix = (c) => Math.round(255 + (c - 255) * Math.abs(t));
    return `rgb(${mix(r)} ${mix(g)} ${mix(b)})`;
  }

  function heatmap(name, matrix) {
    const rows = matrix.length, cols = matrix[0].length;
    const values = matrix.flat();
    const scale = Math.max(...values.map(Math.abs));
    const size = Math.max(3, Math.min(36, Math.floor(240 / Math.max(rows, cols))));
    const figure = document.createElement('figure');
    figure.dataset.name = name;
    const caption = document.createElement('figcaption');
    const title = document.createElement('strong');
    title.textContent = name;
    caption.append(title, ` ∂L/∂${name}: ${rows} × ${cols}`);
    const canvas = document.createElement('canvas');
    canvas.width = cols * size;
    canvas.height = rows * size;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', `${name}, ${rows} by ${cols}, values from ` +
      `${fmt(Math.min(...values))} to ${fmt(Math.max(...values))}`);
    const ctx = canvas.getContext('2d');
    matrix.forEach((row, i) => row.forEach((v, j) => {
      ctx.fillStyle = diverging(v, scale);
      ctx.fillRect(j * size, i * size, size, size);
    }));
    const readout = document.createElement('div');
    readout.className = 'readout';
    readout.textContent = 'hover a cell for its value';
    canvas.addEventListener('pointermove', (event) => {
      const box = canvas.getBoundingClientRect();
      const j = Math.floor(((event.clientX - box.left) / box.width) * cols);
      const i = Math.floor(((event.clientY - box.top) / box.height) * rows);
      if (i >= 0 && i < rows && j >= 0 && j < cols) {
        readout.textContent = `${name}[${i + 1}, ${j + 1}] = ${fmt(matrix[i][j])}`;
      }
    });
    const legend = document.createElement('div');
    legend.className = 'legend';
    legend.append(`−${fmt(scale)}`, document.createElement('i'), `+${fmt(scale)}`);
    figure.append(caption, canvas, readout, legend);
    return figure;
  }

  // ---- start -----------------------------------------------------------------------------------

  initToken();
  initFormErrors();
  initSelects();
  initCreateForm();
  initDrawing();
  initDigits();
  initSmall();
  initTrain();
  initGradients();
  drawLossChart(null);
  refreshModels();
})();

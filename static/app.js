/* FastGate admin dashboard.
 *
 * Plain JavaScript, no build step. Talks only to the documented admin API
 * (docs/admin-api.md). Every string that comes from the API is rendered with
 * textContent / DOM APIs, never as HTML; no inline scripts or handlers, so a
 * strict CSP (default-src 'self') can be applied.
 */
(function () {
  'use strict';

  var TOKEN_KEY = 'fastgate.admin_token';
  var LANG_KEY = 'fastgate.lang';
  var REFRESH_MS = 30000;
  var KEYS_PAGE = 50;
  var LOGS_PAGE = 50;

  // ---------------------------------------------------------------- i18n
  var I18N = {
    en: {
      'brand.sub': 'Admin', 'lang.label': 'Language',
      'action.signout': 'Sign out', 'action.refresh': 'Refresh', 'action.autorefresh': 'Auto-refresh 30 s',
      'action.close': 'Close', 'action.copy': 'Copy', 'action.copied': 'Copied', 'action.cancel': 'Cancel',
      'action.enable': 'Enable', 'action.disable': 'Disable', 'action.rotate': 'Rotate', 'action.delete': 'Delete',
      'action.logs': 'Logs', 'action.edit': 'Edit', 'action.save': 'Save',
      'signin.title': 'Sign in', 'signin.help': 'Enter the admin token (security.admin_token) of this FastGate instance.',
      'signin.token': 'Admin token', 'signin.submit': 'Sign in',
      'signin.invalid': 'The admin token was rejected. Please sign in again.',
      'signin.empty': 'Please enter the admin token.',
      'tab.dashboard': 'Dashboard', 'tab.keys': 'API keys', 'tab.logs': 'Audit log',
      'status.updated': 'Updated', 'status.loading': 'Loading…', 'status.paused': 'paused',
      'status.active': 'Active', 'status.disabled': 'Disabled', 'status.expired': 'Expired',
      'dash.title': 'Overview', 'window.1h': '1 h', 'window.24h': '24 h', 'window.7d': '7 d', 'window.30d': '30 d',
      'stat.requests': 'Requests', 'stat.success': 'Success rate', 'stat.latency': 'Latency avg / p95',
      'stat.stream': 'Streaming share', 'stat.tokens': 'Tokens', 'stat.keys': 'Active keys',
      'stat.errors': '{n} errors', 'stat.ok': '{n} succeeded', 'stat.p50': 'p50 {a} · TTFB {b}',
      'stat.streamreq': '{n} streaming requests', 'stat.tokensplit': 'prompt {a} · completion {b}',
      'stat.keystotal': 'total: {n}',
      'chart.title': 'Request trend', 'chart.requests': 'Requests', 'chart.errors': 'Errors',
      'chart.utcdays': 'Day (UTC)',
      'chart.empty': 'No requests in this window yet.',
      'health.title': 'System status', 'health.status': 'Status', 'health.version': 'Version',
      'health.uptime': 'Uptime', 'health.database': 'Database', 'health.queue': 'Audit queue',
      'health.audit': 'Audit writes', 'health.lasterror': 'Last error', 'health.none': 'none',
      'health.backend': 'Backend', 'health.backend.ok': 'no failure since start',
      'health.backend.failed': '{n} failed requests; last {t}: {c}',
      'health.s.healthy': 'healthy', 'health.s.degraded': 'degraded', 'health.reachable': 'reachable', 'health.unreachable': 'unreachable', 'health.down': 'unreachable',
      'health.auditline': '{w} written · {r} retried · {d} dropped · {l} lost',
      'health.r.database_unreachable': 'database unreachable', 'health.r.audit_writes_failing': 'audit writes failing',
      'health.r.audit_records_lost': 'audit records lost in the last minute',
      'health.r.draining': 'stopping (draining)',
      'health.r.audit_spool_unusable': 'running without the audit spool file',
      'quick.title': 'Quick actions', 'quick.create': 'Create API key', 'quick.refresh': 'Refresh status',
      'quick.logs': 'View audit log',
      'top.keys': 'Top keys', 'top.models': 'Models', 'top.empty': 'No data', 'top.nokey': '(no key)',
      'keys.create': 'Create API key', 'keys.source': 'Source path', 'keys.source.ph': 'user1',
      'keys.name': 'Name (optional)', 'keys.name.short': 'Name', 'keys.perms': 'Permissions', 'keys.perms.ph': 'default',
      'keys.days': 'Expires in (days)', 'keys.days.ph': 'default', 'keys.never': 'Never expires',
      'keys.submit': 'Create key', 'keys.warn': 'Copy this key now. It is shown only once and cannot be retrieved later.',
      'keys.dismiss': 'I have copied it', 'keys.newtitle': 'New API key for “{s}”',
      'keys.rotatedtitle': 'Rotated API key for “{s}”', 'keys.list': 'API keys',
      'keys.empty': 'No API keys yet. Create one above.', 'keys.never.short': 'never',
      'keys.nomatch': 'No keys match these filters.',
      'keys.err.source': 'Source path is required.', 'keys.err.days': 'Expiry must be a whole number of days between 1 and 36500.',
      'keys.created': 'Key created.', 'keys.enabled': 'Key enabled.', 'keys.disabled': 'Key disabled.',
      'keys.deleted': 'Key deleted.', 'keys.rotated': 'Key rotated. The old key no longer works.',
      'keys.rotated.grace': 'Key rotated. The old key works until {t}.',
      'keys.grace.label': 'The old key keeps working for', 'keys.grace.0': 'no time: it stops at once',
      'keys.grace.300': '5 minutes', 'keys.grace.3600': '1 hour', 'keys.grace.86400': '24 hours',
      'keys.confirm.delete.title': 'Delete API key?',
      'keys.confirm.delete.body': 'Key {d} ({s}) will be deleted permanently. Clients using it will get 401.',
      'keys.confirm.rotate.title': 'Rotate API key?',
      'keys.confirm.rotate.body': 'A new key replaces {d} ({s}); clients must switch to it.',
      'keys.confirm.rotate.expired': 'This key has expired, and the new key keeps its expiry: it will be refused (401) at once. Extend the expiry with Edit first.',
      'keys.confirm.rotate.disabled': 'This key is disabled, and so will the new key be: enable it to let clients in.',
      'keys.confirm.disable.title': 'Disable API key?',
      'keys.confirm.disable.body': 'Key {d} ({s}) will be rejected with 401 until it is enabled again.',
      'keys.range': '{a}–{b} of {n}', 'keys.unused': 'never',
      'keys.perms.none': 'none', 'keys.perms.none.title': 'No permissions: every route refuses this key (403).',
      'keys.updated': 'Key updated.', 'keys.nochange': 'Nothing changed.',
      'edit.title': 'Edit API key', 'edit.expiry': 'Expiry', 'edit.expiry.keep': 'Keep the current one ({t})',
      'edit.expiry.days': 'In a number of days from now', 'edit.expiry.at': 'At a date and time',
      'edit.perms.help': 'Comma-separated. The unified endpoint needs api_gateway.permission (chat unless configured otherwise); * allows every route; left empty, every route refuses the key.',
      'edit.err.at': 'Enter the date and time the key expires.',
      'edit.past': 'This time is in the past: the key stops working as soon as you save.',
      'keys.err.long': '{f} is too long: at most 256 bytes (about 85 Chinese characters).',
      'keys.err.permcount': 'At most 32 permissions.',
      'keys.err.perm': 'Permission “{p}” is not valid: 1 to 64 of A–Z, a–z, 0–9 and _ - . : *',
      'keys.err.gone': 'This key no longer exists: it was deleted elsewhere.',
      'err.code.too_many_attempts': 'Too many wrong admin tokens from this address: try again in {n} s.',
      'err.code.store_unavailable': 'The gateway cannot reach its database: keys and logs cannot be read or changed now. Proxied requests with keys already checked keep working; see the system status.',
      'err.code.not_found': 'Not found: it may have been deleted elsewhere.',
      'filter.all': 'All', 'filter.apply': 'Apply', 'filter.reset': 'Reset', 'filter.key': 'Key',
      'filter.export': 'Export CSV', 'logs.exported': 'audit_logs.csv saved ({s})',
      'logs.exported.capped': 'audit_logs.csv saved ({s}): the newest {n} records only; GET /admin/logs/export has no limit',
      'filter.status': 'Status', 'filter.type': 'Type', 'filter.model': 'Model',
      'filter.since': 'From', 'filter.until': 'Until',
      'logs.err.range': 'The start of the time range must be before its end.',
      'badge.stream': 'Stream', 'badge.plain': 'Plain',
      'col.source': 'Source path', 'col.key': 'Key', 'col.status': 'Status', 'col.expires': 'Expires',
      'col.lastused': 'Last used', 'col.requests': 'Requests', 'col.created': 'Created', 'col.actions': 'Actions',
      'col.perms': 'Permissions',
      'col.errors': 'Errors', 'col.tokens': 'Tokens', 'col.model': 'Model', 'col.time': 'Time', 'col.type': 'Type',
      'col.request': 'Request', 'col.latency': 'Latency', 'col.ttfb': 'TTFB', 'col.bytes': 'Bytes in / out',
      'logs.empty': 'No requests recorded yet.', 'logs.nomatch': 'No records match these filters.', 'logs.count': '{n} records shown', 'page.more': 'Load older',
      'page.prev': 'Previous', 'page.next': 'Next',
      'detail.title': 'Request detail',
      'f.request_id': 'Request ID', 'f.timestamp': 'Time', 'f.key_id': 'Key ID', 'f.source_path': 'Source path',
      'f.client_ip': 'Client IP', 'f.user_agent': 'User agent', 'f.method': 'Method', 'f.path': 'Path',
      'f.target_url': 'Target URL', 'f.status': 'Status', 'f.is_stream': 'Type', 'f.model': 'Model',
      'f.request_bytes': 'Request bytes', 'f.response_bytes': 'Response bytes', 'f.ttfb_ms': 'TTFB',
      'f.duration_ms': 'Duration', 'f.outcome': 'Outcome', 'f.error_code': 'Error code',
      'f.prompt_tokens': 'Prompt tokens', 'f.completion_tokens': 'Completion tokens', 'f.total_tokens': 'Total tokens',
      'err.network': 'Cannot reach the FastGate server ({m}).', 'err.http': 'Request failed with HTTP {s}.',
      'err.copy': 'Copy failed; select the key and copy it by hand.'
    },
    zh: {
      'brand.sub': '管理后台', 'lang.label': '语言',
      'action.signout': '退出', 'action.refresh': '刷新', 'action.autorefresh': '每 30 秒自动刷新',
      'action.close': '关闭', 'action.copy': '复制', 'action.copied': '已复制', 'action.cancel': '取消',
      'action.enable': '启用', 'action.disable': '禁用', 'action.rotate': '轮换', 'action.delete': '删除',
      'action.logs': '日志', 'action.edit': '编辑', 'action.save': '保存',
      'signin.title': '登录', 'signin.help': '请输入本 FastGate 实例的管理员令牌（security.admin_token）。',
      'signin.token': '管理员令牌', 'signin.submit': '登录',
      'signin.invalid': '管理员令牌无效，请重新登录。',
      'signin.empty': '请输入管理员令牌。',
      'tab.dashboard': '仪表板', 'tab.keys': 'API Key', 'tab.logs': '审计日志',
      'status.updated': '更新于', 'status.loading': '加载中…', 'status.paused': '已暂停',
      'status.active': '已启用', 'status.disabled': '已禁用', 'status.expired': '已过期',
      'dash.title': '概览', 'window.1h': '1 小时', 'window.24h': '24 小时', 'window.7d': '7 天', 'window.30d': '30 天',
      'stat.requests': '请求数', 'stat.success': '成功率', 'stat.latency': '平均 / P95 延迟',
      'stat.stream': '流式占比', 'stat.tokens': 'Token 用量', 'stat.keys': '活跃 Key',
      'stat.errors': '{n} 个错误', 'stat.ok': '{n} 个成功', 'stat.p50': 'P50 {a} · 首字节 {b}',
      'stat.streamreq': '{n} 个流式请求', 'stat.tokensplit': '输入 {a} · 输出 {b}',
      'stat.keystotal': '共 {n} 个 Key',
      'chart.title': '请求趋势', 'chart.requests': '请求', 'chart.errors': '错误',
      'chart.utcdays': '日期（UTC）',
      'chart.empty': '该时间段内暂无请求。',
      'health.title': '系统状态', 'health.status': '状态', 'health.version': '版本',
      'health.uptime': '运行时间', 'health.database': '数据库', 'health.queue': '审计队列',
      'health.audit': '审计写入', 'health.lasterror': '最近错误', 'health.none': '无',
      'health.backend': '后端', 'health.backend.ok': '启动以来无失败',
      'health.backend.failed': '{n} 次请求失败；最近一次 {t}：{c}',
      'health.s.healthy': '正常', 'health.s.degraded': '降级', 'health.reachable': '可访问', 'health.unreachable': '不可访问', 'health.down': '无法访问',
      'health.auditline': '已写入 {w} · 重试 {r} · 丢弃 {d} · 丢失 {l}',
      'health.r.database_unreachable': '数据库不可访问', 'health.r.audit_writes_failing': '审计写入失败',
      'health.r.audit_records_lost': '最近一分钟有审计记录丢失',
      'health.r.draining': '正在停止（排空中）',
      'health.r.audit_spool_unusable': '审计缓冲文件不可用',
      'quick.title': '快速操作', 'quick.create': '一键创建 Key', 'quick.refresh': '刷新系统状态',
      'quick.logs': '查看审计日志',
      'top.keys': 'Key 排行', 'top.models': '模型', 'top.empty': '暂无数据', 'top.nokey': '（无 Key）',
      'keys.create': '创建 API Key', 'keys.source': '来源路径 (source_path)', 'keys.source.ph': 'user1',
      'keys.name': '名称（可选）', 'keys.name.short': '名称', 'keys.perms': '权限', 'keys.perms.ph': '默认',
      'keys.days': '有效期（天）', 'keys.days.ph': '默认', 'keys.never': '永不过期',
      'keys.submit': '创建 Key', 'keys.warn': '请立即复制此 Key。它只显示这一次，之后无法再次查看。',
      'keys.dismiss': '我已复制', 'keys.newtitle': '“{s}” 的新 API Key',
      'keys.rotatedtitle': '“{s}” 轮换后的新 API Key', 'keys.list': 'API Key 列表',
      'keys.empty': '还没有 API Key，请在上方创建。', 'keys.never.short': '永不',
      'keys.nomatch': '没有符合筛选条件的 Key。',
      'keys.err.source': '请填写来源路径。', 'keys.err.days': '有效期必须是 1 到 36500 之间的整数天数。',
      'keys.created': 'Key 已创建。', 'keys.enabled': 'Key 已启用。', 'keys.disabled': 'Key 已禁用。',
      'keys.deleted': 'Key 已删除。', 'keys.rotated': 'Key 已轮换，旧 Key 已失效。',
      'keys.rotated.grace': 'Key 已轮换，旧 Key 在 {t} 前仍可使用。',
      'keys.grace.label': '旧 Key 继续有效的时间', 'keys.grace.0': '不保留：立即失效',
      'keys.grace.300': '5 分钟', 'keys.grace.3600': '1 小时', 'keys.grace.86400': '24 小时',
      'keys.confirm.delete.title': '删除 API Key？',
      'keys.confirm.delete.body': 'Key {d}（{s}）将被永久删除，使用它的客户端将收到 401。',
      'keys.confirm.rotate.title': '轮换 API Key？',
      'keys.confirm.rotate.body': '将生成新 Key 替换 {d}（{s}），客户端需改用新 Key。',
      'keys.confirm.rotate.expired': '此 Key 已过期，新 Key 沿用其过期时间：会立即被拒绝（401）。请先用“编辑”延长过期时间。',
      'keys.confirm.rotate.disabled': '此 Key 已停用，新 Key 也将处于停用状态：启用后客户端才能使用。',
      'keys.confirm.disable.title': '禁用 API Key？',
      'keys.confirm.disable.body': 'Key {d}（{s}）在重新启用之前会被拒绝（401）。',
      'keys.range': '第 {a}–{b} 条，共 {n} 条', 'keys.unused': '从未使用',
      'keys.perms.none': '无', 'keys.perms.none.title': '没有任何权限：所有路由都会拒绝此 Key（403）。',
      'keys.updated': 'Key 已更新。', 'keys.nochange': '没有修改。',
      'edit.title': '编辑 API Key', 'edit.expiry': '过期时间', 'edit.expiry.keep': '保持不变（{t}）',
      'edit.expiry.days': '从现在起的天数', 'edit.expiry.at': '指定日期和时间',
      'edit.perms.help': '用逗号分隔。统一端点需要 api_gateway.permission 所配置的权限（默认 chat）；* 允许所有路由；留空则此 Key 无法使用。',
      'edit.err.at': '请填写 Key 的过期日期和时间。',
      'edit.past': '该时间已经过去：保存后此 Key 立即失效。',
      'keys.err.long': '{f}过长：最多 256 字节（约 85 个汉字）。',
      'keys.err.permcount': '最多 32 个权限。',
      'keys.err.perm': '权限“{p}”无效：只能由 1 到 64 个 A–Z、a–z、0–9 及 _ - . : * 组成。',
      'keys.err.gone': '此 Key 已不存在：已在别处删除。',
      'err.code.too_many_attempts': '此地址输入错误管理令牌的次数过多，请 {n} 秒后再试。',
      'err.code.store_unavailable': '网关无法连接数据库：暂时无法读取或修改 Key 和日志。已验证过的 Key 的代理请求仍可继续；请查看系统状态。',
      'err.code.not_found': '未找到：可能已在别处删除。',
      'filter.all': '全部', 'filter.apply': '筛选', 'filter.reset': '重置', 'filter.key': 'Key',
      'filter.export': '导出 CSV', 'logs.exported': '已保存 audit_logs.csv（{s}）',
      'logs.exported.capped': '已保存 audit_logs.csv（{s}）：仅含最新的 {n} 条记录；GET /admin/logs/export 不限条数',
      'filter.status': '状态码', 'filter.type': '类型', 'filter.model': '模型',
      'filter.since': '开始时间', 'filter.until': '结束时间',
      'logs.err.range': '开始时间必须早于结束时间。',
      'badge.stream': '流式', 'badge.plain': '普通',
      'col.source': '来源路径', 'col.key': 'Key', 'col.status': '状态', 'col.expires': '过期时间',
      'col.lastused': '最近使用', 'col.requests': '请求数', 'col.created': '创建时间', 'col.actions': '操作',
      'col.perms': '权限',
      'col.errors': '错误', 'col.tokens': 'Token', 'col.model': '模型', 'col.time': '时间', 'col.type': '类型',
      'col.request': '请求', 'col.latency': '耗时', 'col.ttfb': '首字节', 'col.bytes': '字节 入 / 出',
      'logs.empty': '暂无请求记录。', 'logs.nomatch': '没有符合筛选条件的记录。', 'logs.count': '已显示 {n} 条记录', 'page.more': '加载更早记录',
      'page.prev': '上一页', 'page.next': '下一页',
      'detail.title': '请求详情',
      'f.request_id': '请求 ID', 'f.timestamp': '时间', 'f.key_id': 'Key ID', 'f.source_path': '来源路径',
      'f.client_ip': '客户端 IP', 'f.user_agent': 'User-Agent', 'f.method': '方法', 'f.path': '路径',
      'f.target_url': '目标地址', 'f.status': '状态码', 'f.is_stream': '类型', 'f.model': '模型',
      'f.request_bytes': '请求字节', 'f.response_bytes': '响应字节', 'f.ttfb_ms': '首字节时间',
      'f.duration_ms': '总耗时', 'f.outcome': '结果', 'f.error_code': '错误码',
      'f.prompt_tokens': '输入 Token', 'f.completion_tokens': '输出 Token', 'f.total_tokens': '总 Token',
      'err.network': '无法连接 FastGate 服务器（{m}）。', 'err.http': '请求失败，HTTP {s}。',
      'err.copy': '复制失败，请手动选中 Key 复制。'
    }
  };

  function detectLang() {
    var saved = null;
    try { saved = localStorage.getItem(LANG_KEY); } catch (e) { /* storage disabled */ }
    if (saved === 'zh' || saved === 'en') return saved;
    var nav = (navigator.language || '').toLowerCase();
    return nav.indexOf('zh') === 0 ? 'zh' : 'en';
  }

  var lang = detectLang();

  function t(key, vars) {
    var s = (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
    if (vars) {
      s = s.replace(/\{(\w+)\}/g, function (m, name) {
        return Object.prototype.hasOwnProperty.call(vars, name) ? String(vars[name]) : m;
      });
    }
    return s;
  }

  function applyI18n() {
    document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
    document.title = lang === 'zh' ? 'FastGate 管理后台' : 'FastGate Admin';
    var nodes = document.querySelectorAll('[data-i18n]');
    for (var i = 0; i < nodes.length; i++) nodes[i].textContent = t(nodes[i].getAttribute('data-i18n'));
    nodes = document.querySelectorAll('[data-i18n-placeholder]');
    for (i = 0; i < nodes.length; i++) nodes[i].setAttribute('placeholder', t(nodes[i].getAttribute('data-i18n-placeholder')));
    nodes = document.querySelectorAll('[data-i18n-aria]');
    for (i = 0; i < nodes.length; i++) nodes[i].setAttribute('aria-label', t(nodes[i].getAttribute('data-i18n-aria')));
    $('lang-select').value = lang;
  }

  // ---------------------------------------------------------------- DOM helpers
  function $(id) { return document.getElementById(id); }
  function show(node, on) { node.classList.toggle('d-none', !on); }

  // Bidirectional controls (embeddings, overrides, isolates, marks) in text a client or an admin
  // chose reorder what is shown: a model `approved-<U+202E>txt.exe` read as "approved-exe.txt".
  var BIDI = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;
  /** `s` as text to show: each bidirectional control written out as `[U+202E]`. */
  function visible(s) {
    return String(s).replace(BIDI, function (c) {
      return '[U+' + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0') + ']';
    });
  }
  var BIDI_SPLIT = new RegExp('(' + BIDI.source + ')');
  /**
   * Set `node`'s text (never HTML) to `s`, each bidirectional control written out as
   * `[U+202E]` in a marker of its own (`fg-bidi`), so it stands out from the text around it.
   * Titles and `<option>`s cannot hold markup: they take `visible(s)`.
   */
  function setText(node, s) {
    s = String(s);
    if (s.search(BIDI) < 0) { node.textContent = s; return; }
    clear(node);
    s.split(BIDI_SPLIT).forEach(function (part, i) {
      if (i % 2) {
        var mark = document.createElement('span');
        mark.className = 'fg-bidi';
        mark.textContent = visible(part);
        node.appendChild(mark);
      } else if (part) {
        node.appendChild(document.createTextNode(part));
      }
    });
  }

  /**
   * Build an element. `text` is always set as text (never HTML); `text` and `title` show
   * bidirectional controls written out (`setText`, `visible`).
   */
  function el(tag, opts, children) {
    var node = document.createElement(tag);
    opts = opts || {};
    if (opts.cls) node.className = opts.cls;
    if (opts.text !== undefined && opts.text !== null) {
      if (tag === 'option') node.textContent = visible(opts.text); else setText(node, opts.text);
    }
    if (opts.title) node.title = visible(opts.title);
    if (opts.attrs) {
      for (var k in opts.attrs) {
        if (Object.prototype.hasOwnProperty.call(opts.attrs, k) && opts.attrs[k] !== undefined && opts.attrs[k] !== null) {
          node.setAttribute(k, String(opts.attrs[k]));
        }
      }
    }
    if (children) {
      for (var i = 0; i < children.length; i++) {
        var c = children[i];
        if (c === null || c === undefined) continue;
        node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
      }
    }
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  /**
   * Hide a Bootstrap modal, also one still fading in: Bootstrap ignores `hide()` during the
   * show transition, so an OK clicked that fast would leave the dialog open over the page.
   * `data-modal` (showing, shown, hiding, hidden) is kept by the listeners set in `bind()`.
   */
  function hideModal(modal, node) {
    var state = node.getAttribute('data-modal');
    if (state === 'shown') { modal.hide(); return; }
    if (state !== 'showing') return;
    node.addEventListener('shown.bs.modal', function once() {
      node.removeEventListener('shown.bs.modal', once);
      modal.hide();
    });
  }

  /** A table cell carrying its column name (shown as a label when tables collapse on phones). */
  function td(labelKey, opts, children) {
    opts = opts || {};
    opts.attrs = opts.attrs || {};
    opts.attrs['data-label'] = t(labelKey);
    return el('td', opts, children);
  }

  // ---------------------------------------------------------------- formatting
  function locale() { return lang === 'zh' ? 'zh-CN' : 'en-US'; }
  function fmtInt(n) {
    if (n === null || n === undefined || isNaN(n)) return '—';
    return new Intl.NumberFormat(locale()).format(n);
  }
  function fmtPct(x) {
    if (x === null || x === undefined || isNaN(x)) return '—';
    return new Intl.NumberFormat(locale(), { style: 'percent', maximumFractionDigits: 1 }).format(x);
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined || isNaN(ms)) return '—';
    if (ms >= 10000) return (ms / 1000).toFixed(1) + ' s';
    if (ms >= 1000) return (ms / 1000).toFixed(2) + ' s';
    if (ms >= 100) return Math.round(ms) + ' ms';
    return (Math.round(ms * 10) / 10) + ' ms';
  }
  function fmtBytes(b) {
    if (b === null || b === undefined || isNaN(b)) return '—';
    if (b < 1024) return b + ' B';
    if (b < 1024 * 1024) return (b / 1024).toFixed(1) + ' KiB';
    return (b / 1024 / 1024).toFixed(1) + ' MiB';
  }
  function fmtTime(iso) {
    if (!iso) return '—';
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    return d.toLocaleString(locale(), { year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }
  function pad2(n) { return (n < 10 ? '0' : '') + n; }
  /** An RFC 3339 time as the value of a `datetime-local` input (the browser's time zone). */
  function toLocalInput(iso) {
    if (!iso) return '';
    var d = new Date(iso);
    if (isNaN(d.getTime())) return '';
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + 'T' +
      pad2(d.getHours()) + ':' + pad2(d.getMinutes()) + ':' + pad2(d.getSeconds());
  }
  /** A `datetime-local` input's value (local time) as RFC 3339 in UTC; '' when empty or invalid. */
  function fromLocalInput(value) {
    if (!value) return '';
    var d = new Date(value); // a date-time without an offset is local time
    return isNaN(d.getTime()) ? '' : d.toISOString();
  }
  function fmtUptime(sec) {
    if (sec === null || sec === undefined || isNaN(sec)) return '—';
    sec = Math.floor(sec);
    var d = Math.floor(sec / 86400), h = Math.floor((sec % 86400) / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    var parts = lang === 'zh'
      ? [d ? d + ' 天' : '', h ? h + ' 小时' : '', m ? m + ' 分' : '', (!d && !h) ? s + ' 秒' : '']
      : [d ? d + 'd' : '', h ? h + 'h' : '', m ? m + 'm' : '', (!d && !h) ? s + 's' : ''];
    return parts.filter(Boolean).join(' ');
  }

  // ---------------------------------------------------------------- API
  function ApiError(message, status, code) {
    this.message = message; this.status = status; this.code = code;
  }
  ApiError.prototype = Object.create(Error.prototype);

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return memToken; }
  }
  var memToken = null;
  function setToken(tok) {
    memToken = tok;
    try {
      if (tok) sessionStorage.setItem(TOKEN_KEY, tok); else sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: keep in memory */ }
  }

  function qs(params) {
    var parts = [];
    for (var k in params) {
      if (!Object.prototype.hasOwnProperty.call(params, k)) continue;
      var v = params[k];
      if (v === '' || v === null || v === undefined) continue;
      parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(v));
    }
    return parts.length ? '?' + parts.join('&') : '';
  }

  /**
   * Call the admin API. Resolves with parsed JSON (null for 204; a Blob with `opts.blob`);
   * rejects with ApiError.
   */
  function api(method, path, body, opts) {
    opts = opts || {};
    var headers = { 'Accept': opts.accept || 'application/json' };
    var tok = opts.token !== undefined ? opts.token : getToken();
    if (tok && !opts.noAuth) headers['Authorization'] = 'Bearer ' + tok;
    var init = { method: method, headers: headers, cache: 'no-store', credentials: 'same-origin' };
    if (body !== undefined && body !== null) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    return fetch(path, init).then(function (res) {
      if (res.status === 204) return null;
      if (res.ok && opts.blob) return res.blob();
      return res.text().then(function (txt) {
        var data = null;
        if (txt) { try { data = JSON.parse(txt); } catch (e) { data = null; } }
        if (res.ok || (opts.acceptStatus && opts.acceptStatus.indexOf(res.status) >= 0 && data)) return data;
        var msg = data && data.error && typeof data.error.message === 'string' ? data.error.message : t('err.http', { s: res.status });
        var code = data && data.error && data.error.code;
        // Known codes in the page's language; others keep the server's (English) message.
        if (typeof code === 'string' && I18N.en['err.code.' + code]) {
          var wait = parseInt(res.headers.get('Retry-After') || '', 10);
          msg = t('err.code.' + code, { n: isNaN(wait) ? '60' : String(wait) });
        }
        var err = new ApiError(msg, res.status, code);
        if (res.status === 401 && !opts.noAuth && !opts.signin) onUnauthorized();
        throw err;
      });
    }, function (e) {
      throw new ApiError(t('err.network', { m: e && e.message ? e.message : 'network error' }), 0, 'network');
    });
  }

  // ---------------------------------------------------------------- messages
  var toastTimer = null;
  // The banner shows a failed refresh (the next successful one clears it) or a failed action
  // (it stays until the next manual refresh).
  var errorFromRefresh = false;
  function showError(err) {
    if (err && err.status === 401) return; // handled by the sign-in form
    var msg = err && err.message ? err.message : String(err);
    $('error-text').textContent = msg;
    show($('error-banner'), true);
    errorFromRefresh = false;
  }
  /** An empty-state message, kept translatable (the language switch re-reads `data-i18n`). */
  function emptyText(node, key) {
    node.setAttribute('data-i18n', key);
    node.textContent = t(key);
  }
  function clearError() { show($('error-banner'), false); $('error-text').textContent = ''; }
  function toast(msg) {
    var node = $('toast');
    node.textContent = msg;
    show(node, true);
    if (toastTimer) clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { show(node, false); }, 4000);
  }

  // ---------------------------------------------------------------- auth / views
  var signedIn = false;

  function takeTokenFromUrl() {
    var url;
    try { url = new URL(window.location.href); } catch (e) { return; }
    if (!url.searchParams.has('token')) return;
    var tok = url.searchParams.get('token');
    url.searchParams.delete('token');
    // Remove the token from the address bar (history and Referer) at once.
    var clean = url.pathname + (url.searchParams.toString() ? '?' + url.searchParams.toString() : '') + url.hash;
    window.history.replaceState(window.history.state, '', clean);
    if (tok) setToken(tok);
  }

  function showSignin(message) {
    signedIn = false;
    stopTimer();
    show($('app-view'), false);
    show($('signout-btn'), false);
    show($('signin-view'), true);
    var errNode = $('signin-error');
    errNode.textContent = message || '';
    show(errNode, !!message);
    var input = $('signin-token');
    input.value = '';
    input.focus();
  }

  function onUnauthorized() {
    setToken(null);
    showSignin(t('signin.invalid'));
  }

  function showApp() {
    signedIn = true;
    show($('signin-view'), false);
    show($('app-view'), true);
    show($('signout-btn'), true);
    startTimer();
    refreshAll(true);
  }

  /**
   * Check a token against the API: resolves true/false; rejects on other errors. Asks
   * `/admin/config`, which needs no database: while the database is down, the admin still gets
   * in and sees the outage in the status panel (a database call here answered 503, and the page
   * sent the admin back to the sign-in form, also with the right token).
   */
  function verifyToken(tok) {
    return api('GET', '/admin/config', null, { token: tok, signin: true })
      .then(function () { return true; }, function (err) {
        if (err.status === 401) return false;
        throw err;
      });
  }

  function start() {
    takeTokenFromUrl();
    var tok = getToken();
    if (!tok) { showSignin(''); return; }
    verifyToken(tok).then(function (ok) {
      if (ok) showApp();
      else { setToken(null); showSignin(t('signin.invalid')); }
    }, function (err) {
      // Server problem other than auth: show the form with the message.
      showSignin(err.message);
    });
  }

  // ---------------------------------------------------------------- tabs
  var currentTab = 'dashboard';
  /**
   * Show a tab. Its address becomes a history entry (`keep` false), so the browser's Back and
   * Forward move between tabs; `keep` (the first tab, a Back/Forward) only corrects the address.
   */
  function selectTab(name, keep) {
    currentTab = name;
    var tabs = document.querySelectorAll('[data-tab]');
    for (var i = 0; i < tabs.length; i++) {
      var on = tabs[i].getAttribute('data-tab') === name;
      tabs[i].classList.toggle('active', on);
      if (on) tabs[i].setAttribute('aria-current', 'page'); else tabs[i].removeAttribute('aria-current');
    }
    // The address names the tab (M-FastGate's page URLs), so a reload stays on it.
    var path = '/admin/ui/' + (name === 'dashboard' ? '' : name);
    if (/^\/admin\/ui\//.test(window.location.pathname) && window.location.pathname !== path) {
      var url = path + window.location.search + window.location.hash;
      if (keep) window.history.replaceState(window.history.state, '', url);
      else window.history.pushState(null, '', url);
    }
    show($('view-dashboard'), name === 'dashboard');
    show($('view-keys'), name === 'keys');
    show($('view-logs'), name === 'logs');
    if (name === 'dashboard' && chart) chart.resize();
  }

  // ---------------------------------------------------------------- refresh
  var timer = null;
  var inFlight = 0;
  function startTimer() {
    stopTimer();
    if ($('autorefresh-toggle').checked) timer = setInterval(function () { refreshAll(false); }, REFRESH_MS);
  }
  function stopTimer() { if (timer) { clearInterval(timer); timer = null; } }

  function busy(delta) {
    inFlight += delta;
    show($('refresh-spinner'), inFlight > 0);
  }

  function refreshAll(manual) {
    if (!signedIn) return Promise.resolve();
    busy(1);
    var jobs = [loadHealth(), loadMetrics(), loadKeys(), loadKeyOptions()];
    // Auto-refresh keeps an expanded (paged) log list as it is; a manual refresh restarts it.
    if (manual || !logsState.paged) jobs.push(loadLogs(false));
    return Promise.all(jobs.map(function (p) { return p.catch(function (e) { return e; }); }))
      .then(function (results) {
        var firstErr = null;
        for (var i = 0; i < results.length; i++) if (results[i] instanceof ApiError) { firstErr = results[i]; break; }
        if (firstErr) {
          // "Updated" keeps the time of the last refresh that worked.
          showError(firstErr);
          errorFromRefresh = firstErr.status !== 401;
          return;
        }
        if (manual || errorFromRefresh) clearError();
        errorFromRefresh = false;
        $('last-updated').textContent = new Date().toLocaleTimeString(locale(), { hour12: false }) +
          ($('autorefresh-toggle').checked ? '' : ' (' + t('status.paused') + ')');
      })
      .then(function () { busy(-1); }, function () { busy(-1); });
  }

  // ---------------------------------------------------------------- health
  function loadHealth() {
    return api('GET', '/health', null, { noAuth: true, acceptStatus: [503] }).then(renderHealth, function (err) {
      renderHealth(null);
      throw err;
    });
  }

  function renderHealth(h) {
    var badge = $('health-status');
    if (!h) {
      badge.className = 'badge text-bg-danger';
      badge.setAttribute('data-status', 'unreachable');
      badge.textContent = t('health.down');
      // Nothing below is known while the server does not answer.
      ['health-version', 'health-uptime', 'health-db', 'health-queue', 'health-audit', 'health-backend', 'health-lasterror']
        .forEach(function (id) { $(id).textContent = '—'; });
      return;
    }
    var ok = h.status === 'healthy';
    badge.className = 'badge ' + (ok ? 'text-bg-success' : 'text-bg-warning');
    badge.setAttribute('data-status', String(h.status || ''));
    var stKey = 'health.s.' + h.status;
    badge.textContent = I18N.en[stKey] ? t(stKey) : String(h.status || '?');
    // Why it is degraded, in the page's language (a reason this page does not know: as sent).
    var reasons = Array.isArray(h.reasons) ? h.reasons.map(function (r) {
      var rKey = 'health.r.' + r;
      return I18N.en[rKey] ? t(rKey) : String(r);
    }) : [];
    if (reasons.length) badge.textContent += ': ' + reasons.join(', ');
    $('health-version').textContent = h.version ? String(h.version) : '—';
    $('health-uptime').textContent = fmtUptime(h.uptime_seconds);
    var db = h.database || {};
    $('health-db').textContent = (db.backend ? String(db.backend) + ' · ' : '') +
      (db.reachable ? t('health.reachable') : t('health.unreachable'));
    var a = h.audit || {};
    $('health-queue').textContent = fmtInt(a.queue_depth) + ' / ' + fmtInt(a.queue_capacity);
    $('health-audit').textContent = t('health.auditline', {
      w: fmtInt(a.written || 0), r: fmtInt(a.retried || 0), d: fmtInt(a.dropped || 0), l: fmtInt(a.lost || 0)
    });
    // Backend failures: unreachable, reset, silent, or its own 5xx (the gateway itself stays
    // healthy, so the badge above does not show them).
    var up = h.upstream || {};
    var backend = $('health-backend');
    backend.classList.toggle('text-danger', !!up.failures);
    backend.textContent = up.failures ? t('health.backend.failed', {
      n: fmtInt(up.failures),
      t: fmtTime(up.last_failure_at),
      c: up.last_failure_code || ('HTTP ' + (up.last_failure_status || '?'))
    }) : (h.upstream ? t('health.backend.ok') : '—');
    var le = h.last_error;
    var leText;
    if (le === null || le === undefined || le === '') leText = t('health.none');
    else if (typeof le === 'string') leText = le;
    else if (typeof le === 'object' && typeof le.message === 'string') leText = le.message + (le.at ? ' (' + fmtTime(le.at) + ')' : '');
    else leText = JSON.stringify(le);
    $('health-lasterror').textContent = leText;
  }

  // ---------------------------------------------------------------- metrics + chart
  var metricsWindow = '24h';
  var chart = null;

  function loadMetrics() {
    return api('GET', '/admin/metrics' + qs({ window: metricsWindow })).then(renderMetrics);
  }

  function setStat(id, value, sub) {
    $(id).textContent = value;
    $(id + '-sub').textContent = sub || '';
  }

  function renderMetrics(m) {
    m = m || {};
    setStat('stat-requests', fmtInt(m.total_requests), t('stat.errors', { n: fmtInt(m.error_count || 0) }));
    setStat('stat-success', m.total_requests ? fmtPct(m.success_rate) : '—', t('stat.ok', { n: fmtInt(m.success_count || 0) }));
    // Latency figures leave out FastGate's own 4xx refusals: a window holding only those has no
    // latency data ("—"), not a latency of 0 ms. Older servers do not send the sample counts.
    var timed = m.latency_samples === undefined ? m.total_requests : m.latency_samples;
    var ttfbN = m.ttfb_samples === undefined ? timed : m.ttfb_samples;
    setStat('stat-latency', timed ? fmtMs(m.avg_latency_ms) + ' / ' + fmtMs(m.p95_latency_ms) : '—',
      timed ? t('stat.p50', { a: fmtMs(m.p50_latency_ms), b: ttfbN ? fmtMs(m.avg_ttfb_ms) : '—' }) : '');
    $('stat-latency').setAttribute('data-samples', String(timed || 0));
    setStat('stat-stream', m.total_requests ? fmtPct(m.stream_share) : '—', t('stat.streamreq', { n: fmtInt(m.stream_requests || 0) }));
    setStat('stat-tokens', fmtInt(m.total_tokens || 0), t('stat.tokensplit', { a: fmtInt(m.prompt_tokens || 0), b: fmtInt(m.completion_tokens || 0) }));
    setStat('stat-keys', fmtInt(m.active_keys), t('stat.keystotal', { n: fmtInt(m.total_keys) }));
    $('stat-requests').setAttribute('data-value', String(m.total_requests || 0));
    $('stat-tokens').setAttribute('data-value', String(m.total_tokens || 0));
    $('stat-stream').setAttribute('data-value', String(m.stream_requests || 0));
    $('stat-keys').setAttribute('data-value', String(m.active_keys || 0));
    renderChart(m);
    renderTop(m);
  }

  function chartLabel(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso);
    // 30 d: one bar per UTC day, labelled with its date in UTC (local time could show the day
    // before, west of Greenwich).
    var o = metricsWindow === '30d'
      ? { month: '2-digit', day: '2-digit', timeZone: 'UTC' }
      : metricsWindow === '7d'
        ? { month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', hour12: false }
        : { hour: '2-digit', minute: '2-digit', hour12: false };
    return d.toLocaleString(locale(), o);
  }

  function renderChart(m) {
    var series = Array.isArray(m.series) ? m.series : [];
    var labels = [], req = [], errs = [], sum = 0, errSum = 0;
    for (var i = 0; i < series.length; i++) {
      labels.push(chartLabel(series[i].ts));
      req.push(series[i].requests || 0);
      errs.push(series[i].errors || 0);
      sum += series[i].requests || 0;
      errSum += series[i].errors || 0;
    }
    var canvas = $('trend-chart');
    // Exposed for tests and for assistive tech.
    canvas.setAttribute('data-total-requests', String(sum));
    canvas.setAttribute('data-total-errors', String(errSum));
    canvas.setAttribute('data-points', String(series.length));
    show($('chart-empty'), sum === 0);
    // The 30-day bars are UTC days (the server's, whatever the browser's zone): say so on the
    // axis and in the tooltip, as a date alone read as a local day.
    var utcDays = metricsWindow === '30d';
    var xTitle = { display: utcDays, text: utcDays ? t('chart.utcdays') : '' };
    canvas.setAttribute('data-x-title', xTitle.text);
    if (typeof window.Chart !== 'function') return;
    if (!chart) {
      chart = new window.Chart(canvas, {
        type: 'line',
        data: { labels: labels, datasets: [
          { label: t('chart.requests'), data: req, borderColor: '#0d6efd', backgroundColor: 'rgba(13,110,253,.12)', fill: true, tension: 0.25, pointRadius: 0, pointHitRadius: 8, borderWidth: 2 },
          { label: t('chart.errors'), data: errs, borderColor: '#dc3545', backgroundColor: 'rgba(220,53,69,.12)', fill: true, tension: 0.25, pointRadius: 0, pointHitRadius: 8, borderWidth: 2 }
        ] },
        options: {
          responsive: true, maintainAspectRatio: false, animation: false,
          interaction: { mode: 'index', intersect: false },
          scales: {
            x: { title: xTitle, ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 8 }, grid: { display: false } },
            y: { beginAtZero: true, ticks: { precision: 0 } }
          },
          plugins: {
            legend: { position: 'bottom' },
            tooltip: { callbacks: { title: function (items) {
              var label = items.length ? String(items[0].label) : '';
              return metricsWindow === '30d' && label ? label + ' UTC' : label;
            } } }
          }
        }
      });
    } else {
      chart.data.labels = labels;
      chart.options.scales.x.title = xTitle;
      chart.data.datasets[0].data = req;
      chart.data.datasets[1].data = errs;
      chart.data.datasets[0].label = t('chart.requests');
      chart.data.datasets[1].label = t('chart.errors');
      chart.update('none');
    }
  }

  function renderTop(m) {
    var body = $('top-keys-body');
    clear(body);
    var keys = Array.isArray(m.per_key) ? m.per_key.slice() : [];
    keys.sort(function (a, b) { return (b.requests || 0) - (a.requests || 0); });
    keys = keys.slice(0, 8);
    if (!keys.length) body.appendChild(el('tr', {}, [el('td', { cls: 'text-body-secondary', text: t('top.empty'), attrs: { colspan: 4 } })]));
    keys.forEach(function (k) {
      body.appendChild(el('tr', {}, [
        el('td', {}, [el('span', { cls: 'fg-cell-text', text: k.source_path || k.key_id || t('top.nokey'), title: k.key_id || '' })]),
        el('td', { cls: 'text-end', text: fmtInt(k.requests) }),
        el('td', { cls: 'text-end d-none d-sm-table-cell', text: fmtInt(k.errors) }),
        el('td', { cls: 'text-end', text: fmtInt(k.total_tokens) })
      ]));
    });
    body = $('top-models-body');
    clear(body);
    var models = Array.isArray(m.per_model) ? m.per_model.slice() : [];
    models.sort(function (a, b) { return (b.requests || 0) - (a.requests || 0); });
    models = models.slice(0, 8);
    if (!models.length) body.appendChild(el('tr', {}, [el('td', { cls: 'text-body-secondary', text: t('top.empty'), attrs: { colspan: 3 } })]));
    models.forEach(function (x) {
      body.appendChild(el('tr', {}, [
        el('td', {}, [el('span', { cls: 'fg-cell-text', text: x.model || '—' })]),
        el('td', { cls: 'text-end', text: fmtInt(x.requests) }),
        el('td', { cls: 'text-end', text: fmtInt(x.total_tokens) })
      ]));
    });
  }

  // ---------------------------------------------------------------- keys
  var keysState = { offset: 0, total: 0, items: [], seq: 0, source: '' };

  function keysQuery() {
    var st = $('kfl-status').value;
    var p = { limit: KEYS_PAGE, offset: keysState.offset, source_path: $('kfl-source').value.trim() };
    if (st === 'active') { p.active = 'true'; p.expired = 'false'; }
    else if (st === 'disabled') p.active = 'false';
    else if (st === 'expired') p.expired = 'true';
    return p;
  }

  function loadKeys() {
    var first = !keysState.loaded;
    if (first) show($('keys-loading'), true);
    var query = keysQuery();
    keysState.source = query.source_path;
    // A slower answer to an earlier query (the start's refresh, a filter since changed) must
    // not replace the list of a newer one.
    var seq = ++keysState.seq;
    return api('GET', '/admin/keys' + qs(query)).then(function (res) {
      if (seq !== keysState.seq) return;
      keysState.loaded = true;

      show($('keys-loading'), false);
      renderKeys(res || {});
    }, function (err) {
      show($('keys-loading'), false);
      throw err;
    });
  }

  function statusBadge(k) {
    var st = k.status || (k.active ? 'active' : 'disabled');
    var cls = st === 'active' ? 'text-bg-success' : st === 'expired' ? 'text-bg-warning' : 'text-bg-secondary';
    return el('span', { cls: 'badge ' + cls, text: t('status.' + st), attrs: { 'data-testid': 'key-status', 'data-status': st } });
  }

  function renderKeys(res) {
    var items = Array.isArray(res.items) ? res.items : [];
    keysState.items = items;
    keysState.total = typeof res.total === 'number' ? res.total : items.length;
    var body = $('keys-body');
    clear(body);
    items.forEach(function (k) {
      var active = k.status ? k.status === 'active' : !!k.active;
      var toggle = el('button', {
        cls: 'btn btn-sm ' + (k.active ? 'btn-outline-warning fg-btn-warn' : 'btn-outline-success'),
        text: k.active ? t('action.disable') : t('action.enable'),
        attrs: { type: 'button', 'data-testid': 'key-toggle', 'data-action': k.active ? 'disable' : 'enable' }
      });
      toggle.addEventListener('click', function () { toggleKey(k); });
      var rotate = el('button', { cls: 'btn btn-sm btn-outline-primary', text: t('action.rotate'), attrs: { type: 'button', 'data-testid': 'key-rotate' } });
      rotate.addEventListener('click', function () { rotateKey(k); });
      var del = el('button', { cls: 'btn btn-sm btn-outline-danger', text: t('action.delete'), attrs: { type: 'button', 'data-testid': 'key-delete' } });
      del.addEventListener('click', function () { deleteKey(k); });
      var edit = el('button', { cls: 'btn btn-sm btn-outline-secondary', text: t('action.edit'), attrs: { type: 'button', 'data-testid': 'key-edit' } });
      edit.addEventListener('click', function () { openEdit(k); });
      var logs = el('button', { cls: 'btn btn-sm btn-outline-secondary', text: t('action.logs'), attrs: { type: 'button', 'data-testid': 'key-logs' } });
      logs.addEventListener('click', function () { showLogsForKey(k.id); });
      var srcCell = td('col.source', { cls: 'fg-src-cell' }, [
        el('div', { cls: 'fg-cell-text fg-block fw-medium', text: k.source_path || '—', title: k.source_path || '', attrs: { 'data-testid': 'key-source-text' } }),
        k.name ? el('div', { cls: 'small text-body-secondary fg-cell-text fg-block', text: k.name, title: k.name, attrs: { 'data-testid': 'key-name-text' } }) : null
      ]);
      var tr = el('tr', { attrs: { 'data-testid': 'key-row', 'data-key-id': k.id, 'data-active': active ? 'true' : 'false' } }, [
        srcCell,
        td('col.key', { cls: 'fg-mono', text: k.display || k.id, title: k.id }),
        td('col.status', {}, [statusBadge(k)]),
        td('col.perms', { attrs: { 'data-testid': 'key-perms', 'data-perms': (k.permissions || []).join(',') } }, [permBadges(k.permissions)]),
        td('col.expires', { text: k.expires_at ? fmtTime(k.expires_at) : t('keys.never.short'), attrs: { 'data-testid': 'key-expires' } }),
        td('col.lastused', { text: k.last_used_at ? fmtTime(k.last_used_at) : t('keys.unused'), attrs: { 'data-testid': 'key-lastused' } }),
        td('col.requests', { cls: 'text-end', text: fmtInt(k.request_count || 0), attrs: { 'data-testid': 'key-requests' } }),
        td('col.created', { cls: 'd-none d-xxl-table-cell', text: fmtTime(k.created_at) }),
        td('col.actions', { cls: 'text-end fg-actions-cell' }, [el('div', { cls: 'fg-actions' }, [edit, toggle, rotate, logs, del])])
      ]);
      body.appendChild(tr);
    });
    // With a filter on, "none yet" would be untrue: say that nothing matches.
    var filtered = !!(keysState.source || $('kfl-status').value);
    emptyText($('keys-empty'), filtered ? 'keys.nomatch' : 'keys.empty');
    show($('keys-empty'), items.length === 0);
    var a = items.length ? keysState.offset + 1 : 0;
    $('keys-range').textContent = t('keys.range', { a: a, b: keysState.offset + items.length, n: keysState.total });
    $('keys-prev').disabled = keysState.offset <= 0;
    $('keys-next').disabled = keysState.offset + items.length >= keysState.total;
  }

  function keyLabel(k) { return k.source_path || k.name || k.id; }

  /** A key's permissions as small badges; an empty list (every route refuses the key) stands out. */
  function permBadges(perms) {
    perms = Array.isArray(perms) ? perms : [];
    if (!perms.length) {
      return el('span', { cls: 'badge text-bg-warning', text: t('keys.perms.none'), title: t('keys.perms.none.title') });
    }
    var shown = perms.slice(0, 3).map(function (p) {
      return el('span', { cls: 'badge text-bg-light border fg-mono fg-perm', text: p, title: p });
    });
    if (perms.length > 3) shown.push(el('span', { cls: 'small text-body-secondary', text: '+' + (perms.length - 3), title: perms.join(', ') }));
    return el('span', { cls: 'fg-perms' }, shown);
  }

  function parsePerms(text) {
    return text.split(',').map(function (s) { return s.trim(); }).filter(Boolean);
  }

  function utf8Bytes(s) { return new TextEncoder().encode(s).length; }

  /**
   * The server's limits on a key's fields, checked before sending (so the message is in the
   * page's language): source path and name at most 256 bytes, at most 32 permissions of
   * 1 to 64 characters from A–Z a–z 0–9 _ - . : *. Returns the message, or '' when valid.
   */
  function keyFieldsError(source, name, perms) {
    if (utf8Bytes(source) > 256) return t('keys.err.long', { f: t('keys.source') });
    if (utf8Bytes(name) > 256) return t('keys.err.long', { f: t('keys.name.short') });
    if (perms.length > 32) return t('keys.err.permcount');
    for (var i = 0; i < perms.length; i++) {
      if (!/^[A-Za-z0-9_.:*-]{1,64}$/.test(perms[i])) return t('keys.err.perm', { p: perms[i] });
    }
    return '';
  }

  // ---------------------------------------------------------------- key editing (PATCH)
  var editKey = null;
  var editModal = null;
  var editFocusId = null; // the key whose Edit button gets the focus back

  function editError(msg) {
    var n = $('edit-error');
    n.textContent = msg || '';
    show(n, !!msg);
  }

  function syncExpiryRows() {
    var mode = $('ke-expiry').value;
    show($('ke-days-row'), mode === 'days');
    show($('ke-at-row'), mode === 'at');
  }

  /** The "keep the current expiry" choice, in the page's language. */
  function setKeepText(k) {
    $('ke-expiry-keep').textContent = t('edit.expiry.keep', { t: k.expires_at ? fmtTime(k.expires_at) : t('keys.never.short') });
  }

  function openEdit(k) {
    editKey = k;
    editFocusId = k.id;
    setText($('edit-key-display'), (k.display || k.id) + ' · ID ' + k.id);
    $('ke-source').value = k.source_path || '';
    $('ke-name').value = k.name || '';
    $('ke-perms').value = (k.permissions || []).join(', ');
    setKeepText(k);
    $('ke-expiry').value = 'keep';
    $('ke-days').value = '';
    $('ke-at').value = toLocalInput(k.expires_at);
    syncExpiryRows();
    syncPastWarning();
    editError('');
    $('edit-save').disabled = false;
    if (!editModal) editModal = new window.bootstrap.Modal($('edit-modal'));
    editModal.show();
  }

  /** The PATCH body: only the fields the form changed. Returns null (and says why) when invalid. */
  function editBody(k) {
    var body = {};
    var source = $('ke-source').value.trim();
    if (!source) { editError(t('keys.err.source')); $('ke-source').focus(); return null; }
    if (source !== (k.source_path || '')) body.source_path = source;
    var name = $('ke-name').value.trim();
    if (name !== (k.name || '')) body.name = name; // '' clears it
    var perms = parsePerms($('ke-perms').value);
    if (perms.join('\n') !== (k.permissions || []).join('\n')) body.permissions = perms;
    // Only what is sent is checked: a key made by the CLI or imported may hold values the form
    // would not take, and must still be editable otherwise.
    var invalid = keyFieldsError(
      body.source_path === undefined ? '' : source,
      body.name === undefined ? '' : name,
      body.permissions || []);
    if (invalid) { editError(invalid); return null; }
    var mode = $('ke-expiry').value;
    if (mode === 'never') {
      if (k.expires_at) body.never_expires = true;
    } else if (mode === 'days') {
      var raw = $('ke-days').value.trim();
      var days = Number(raw);
      if (!/^\d+$/.test(raw) || days < 1 || days > 36500) { editError(t('keys.err.days')); $('ke-days').focus(); return null; }
      body.expires_days = days;
    } else if (mode === 'at') {
      var at = fromLocalInput($('ke-at').value);
      if (!at) { editError(t('edit.err.at')); $('ke-at').focus(); return null; }
      body.expires_at = at;
    }
    return body;
  }

  function submitEdit(ev) {
    ev.preventDefault();
    editError('');
    var k = editKey;
    if (!k) return;
    var body = editBody(k);
    if (!body) return;
    if (!Object.keys(body).length) { hideModal(editModal, $('edit-modal')); toast(t('keys.nochange')); return; }
    var btn = $('edit-save');
    btn.disabled = true;
    api('PATCH', '/admin/keys/' + encodeURIComponent(k.id), body).then(function () {
      btn.disabled = false;
      editKey = null;
      var id = k.id;
      hideModal(editModal, $('edit-modal'));
      // The list is drawn again: the focus goes to the key's new Edit button.
      return afterKeyChange(t('keys.updated')).then(function () { refocusEdit(id); });
    }, function (err) {
      btn.disabled = false;
      if (err.status === 404) {
        // Deleted elsewhere meanwhile: nothing to edit any more.
        editKey = null;
        editFocusId = null;
        hideModal(editModal, $('edit-modal'));
        showError(new ApiError(t('keys.err.gone'), 404));
        $('error-banner').focus();
        loadKeys().catch(showError);
        return;
      }
      if (err.status !== 401) {
        editError(err.message);
        btn.focus(); // the button was disabled while saving: keep the focus in the dialog
      }
    });
  }

  /** Focus the Edit button of key `id`, if its row is on screen. */
  function focusEdit(id) {
    var rows = document.querySelectorAll('[data-testid="key-row"]');
    for (var i = 0; i < rows.length; i++) {
      if (rows[i].getAttribute('data-key-id') === id) {
        var btn = rows[i].querySelector('[data-testid="key-edit"]');
        if (btn) btn.focus();
        return;
      }
    }
  }

  /** After the list was drawn again, give the focus back if it fell to the page. */
  function refocusEdit(id) {
    var a = document.activeElement;
    if (!a || a === document.body) focusEdit(id);
  }

  /** The warning under a chosen expiry that has already passed. */
  function syncPastWarning() {
    var at = $('ke-expiry').value === 'at' ? fromLocalInput($('ke-at').value) : '';
    show($('ke-at-past'), !!at && Date.parse(at) <= Date.now());
  }

  function showNewKey(res, rotated) {
    setText($('new-key-title'), t(rotated ? 'keys.rotatedtitle' : 'keys.newtitle', { s: keyLabel(res) }));
    $('new-key-value').value = res.api_key || '';
    $('new-key-meta').textContent = (res.id ? 'ID ' + res.id : '') + (res.expires_at ? ' · ' + t('col.expires') + ' ' + fmtTime(res.expires_at) : '');
    $('new-key-copy').textContent = t('action.copy');
    $('new-key-box').setAttribute('data-key-id', res.id || '');
    show($('new-key-box'), true);
    selectTab('keys');
    $('new-key-box').scrollIntoView({ block: 'nearest' });
    $('new-key-value').select();
  }

  function hideNewKey() {
    $('new-key-value').value = '';
    $('new-key-box').removeAttribute('data-key-id');
    show($('new-key-box'), false);
  }

  function copyNewKey() {
    var input = $('new-key-value');
    var val = input.value;
    var done = function () { $('new-key-copy').textContent = t('action.copied'); };
    var fallback = function () {
      input.focus(); input.select();
      var ok = false;
      try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
      if (ok) done(); else showError(new ApiError(t('err.copy'), 0));
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(val).then(done, fallback);
    else fallback();
  }

  function formError(msg) {
    var n = $('key-form-error');
    n.textContent = msg || '';
    show(n, !!msg);
  }

  function submitKeyForm(ev) {
    ev.preventDefault();
    formError('');
    var source = $('kf-source').value.trim();
    if (!source) { formError(t('keys.err.source')); $('kf-source').focus(); return; }
    var body = { source_path: source };
    var name = $('kf-name').value.trim();
    if (name) body.name = name;
    var perms = parsePerms($('kf-perms').value);
    var invalid = keyFieldsError(source, name, perms);
    if (invalid) { formError(invalid); return; }
    if (perms.length) body.permissions = perms;
    if ($('kf-never').checked) body.never_expires = true;
    else {
      var raw = $('kf-days').value.trim();
      if (raw) {
        var days = Number(raw);
        if (!/^\d+$/.test(raw) || days < 1 || days > 36500) { formError(t('keys.err.days')); $('kf-days').focus(); return; }
        body.expires_days = days;
      }
    }
    var btn = $('kf-submit');
    btn.disabled = true;
    api('POST', '/admin/keys', body).then(function (res) {
      btn.disabled = false;
      $('kf-source').value = '';
      $('kf-name').value = '';
      showNewKey(res, false);
      toast(t('keys.created'));
      keysState.offset = 0;
      return Promise.all([loadKeys(), loadKeyOptions(), loadMetrics()]);
    }).catch(function (err) {
      btn.disabled = false;
      if (err.status !== 401) formError(err.message);
    });
  }

  // Confirmation modal (Bootstrap), never window.confirm.
  var confirmAction = null;
  var confirmModal = null;
  /** The confirmation dialog; `grace` shows the rotation's grace-period choice (reset to 0). */
  function askConfirm(title, body, okText, action, grace) {
    show($('confirm-grace-row'), !!grace);
    $('confirm-grace').value = '0';
    setText($('confirm-title'), title);
    setText($('confirm-body'), body);
    $('confirm-ok').textContent = okText;
    confirmAction = action;
    if (!confirmModal) confirmModal = new window.bootstrap.Modal($('confirm-modal'));
    confirmModal.show();
  }
  function onConfirmOk() {
    var action = confirmAction;
    confirmAction = null;
    if (confirmModal) hideModal(confirmModal, $('confirm-modal'));
    if (action) action();
  }

  function afterKeyChange(msg) {
    toast(msg);
    return Promise.all([loadKeys(), loadKeyOptions(), loadMetrics()]).catch(showError);
  }

  /**
   * A key action failed. A 404 means the key was deleted elsewhere meanwhile: say so and draw
   * the list again, so its row goes (as Edit does); other errors are shown as they are.
   */
  function keyActionFailed(k) {
    return function (err) {
      if (err && err.status === 404) {
        forgetNewKey(k.id);
        showError(new ApiError(t('keys.err.gone'), 404));
        return Promise.all([loadKeys(), loadKeyOptions()]).catch(showError);
      }
      showError(err);
    };
  }

  /** Hide the one-time key box if it shows a secret of key `id` (deleted: the secret is dead). */
  function forgetNewKey(id) {
    if ($('new-key-box').getAttribute('data-key-id') === id) hideNewKey();
  }

  function toggleKey(k) {
    var doIt = function () {
      api('PATCH', '/admin/keys/' + encodeURIComponent(k.id), { active: !k.active })
        .then(function () { return afterKeyChange(t(k.active ? 'keys.disabled' : 'keys.enabled')); }, keyActionFailed(k));
    };
    if (k.active) {
      askConfirm(t('keys.confirm.disable.title'), t('keys.confirm.disable.body', { d: k.display || k.id, s: keyLabel(k) }), t('action.disable'), doIt);
    } else doIt();
  }

  function rotateKey(k) {
    var body = t('keys.confirm.rotate.body', { d: k.display || k.id, s: keyLabel(k) });
    // The new secret keeps the key's expiry and state: say so before making a dead key.
    var st = k.status || (k.active ? 'active' : 'disabled');
    if (st === 'expired') body += ' ' + t('keys.confirm.rotate.expired');
    else if (st === 'disabled') body += ' ' + t('keys.confirm.rotate.disabled');
    askConfirm(t('keys.confirm.rotate.title'), body, t('action.rotate'), function () {
      var grace = parseInt($('confirm-grace').value, 10) || 0;
      var until = new Date(Date.now() + grace * 1000);
      api('POST', '/admin/keys/' + encodeURIComponent(k.id) + '/rotate' + qs({ grace_seconds: grace }), {})
        .then(function (res) {
          showNewKey(res, true);
          return afterKeyChange(grace ? t('keys.rotated.grace', { t: fmtTime(until.toISOString()) }) : t('keys.rotated'));
        }, keyActionFailed(k));
    }, true);
  }

  function deleteKey(k) {
    askConfirm(t('keys.confirm.delete.title'), t('keys.confirm.delete.body', { d: k.display || k.id, s: keyLabel(k) }), t('action.delete'), function () {
      api('DELETE', '/admin/keys/' + encodeURIComponent(k.id))
        .then(function () {
          if (keysState.items.length === 1 && keysState.offset > 0) keysState.offset = Math.max(0, keysState.offset - KEYS_PAGE);
          forgetNewKey(k.id);
          return afterKeyChange(t('keys.deleted'));
        }, keyActionFailed(k));
    });
  }

  /** The label of a key in the audit-log filter. */
  function keyOptionLabel(k) { return keyLabel(k) + ' · ' + (k.display || k.id); }

  /**
   * An option for key `id`, which the list did not bring (an older key): labelled with its id,
   * then with its name once fetched, as the listed keys are.
   */
  function extraKeyOption(sel, id) {
    var opt = el('option', { text: id, attrs: { value: id } });
    sel.appendChild(opt);
    api('GET', '/admin/keys/' + encodeURIComponent(id)).then(function (k) {
      if (k && k.id === id) opt.textContent = visible(keyOptionLabel(k));
    }, function () { /* deleted meanwhile: the id stays */ });
  }

  // Key choices for the audit-log filter: the newest 1,000 keys (the API's page limit).
  function loadKeyOptions() {
    return api('GET', '/admin/keys' + qs({ limit: 1000 })).then(function (res) {
      var sel = $('lf-key');
      var cur = sel.value;
      while (sel.options.length > 1) sel.remove(1);
      var items = res && Array.isArray(res.items) ? res.items : [];
      var found = false;
      items.forEach(function (k) {
        var opt = el('option', { text: keyOptionLabel(k), attrs: { value: k.id } });
        if (k.id === cur) found = true;
        sel.appendChild(opt);
      });
      if (cur && !found) extraKeyOption(sel, cur);
      sel.value = cur;
    });
  }

  function showLogsForKey(id) {
    var sel = $('lf-key');
    var has = false;
    for (var i = 0; i < sel.options.length; i++) if (sel.options[i].value === id) has = true;
    if (!has) extraKeyOption(sel, id);
    sel.value = id;
    selectTab('logs');
    applyLogFilters().catch(showError);
  }

  // ---------------------------------------------------------------- audit log
  var logsState = { cursor: null, items: [], paged: false, seq: 0, loaded: false, query: null };
  // The dashboard's export holds the file in the browser's memory: it stops at this many
  // records (the API itself has no limit).
  var EXPORT_MAX = 100000;

  function logsQuery() {
    return {
      limit: LOGS_PAGE,
      key_id: $('lf-key').value,
      status: $('lf-status').value,
      is_stream: $('lf-stream').value,
      model: $('lf-model').value.trim(),
      since: fromLocalInput($('lf-since').value),
      until: fromLocalInput($('lf-until').value)
    };
  }

  /**
   * Download every record matching the filters as CSV (GET /admin/logs/export). Fetched with the
   * Authorization header, so the admin token never goes into a URL, then saved from a blob.
   */
  function exportLogs() {
    // The filters of the records on screen (the last applied), not half-typed ones.
    var q = appliedLogsQuery();
    q.limit = EXPORT_MAX;
    q.format = 'csv';
    q.bom = 'true'; // so that Excel reads Chinese text as UTF-8
    var btn = $('lf-export');
    btn.disabled = true;
    return api('GET', '/admin/logs/export' + qs(q), null, { accept: 'text/csv', blob: true })
      .then(function (blob) {
        var url = URL.createObjectURL(blob);
        var a = el('a', { attrs: { href: url, download: 'audit_logs.csv' } });
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
        return blob.text().then(function (txt) {
          // Records = lines after the header (a cell with a line break would overcount: the
          // warning below may then show needlessly, never too late).
          var lines = -1; // the header line
          for (var at = txt.indexOf('\n'); at >= 0; at = txt.indexOf('\n', at + 1)) lines++;
          toast(t(lines >= EXPORT_MAX ? 'logs.exported.capped' : 'logs.exported',
            { s: fmtBytes(blob.size), n: fmtInt(EXPORT_MAX) }));
        });
      })
      .then(function () { btn.disabled = false; }, function (err) { btn.disabled = false; throw err; });
  }

  /** A copy of the filters last applied (Apply, a select's change, Reset), not half-typed ones. */
  function appliedLogsQuery() {
    if (!logsState.query) logsState.query = logsQuery();
    var q = {};
    for (var k in logsState.query) {
      if (Object.prototype.hasOwnProperty.call(logsState.query, k)) q[k] = logsState.query[k];
    }
    return q;
  }

  /** Take the form's filters as the applied ones and reload the log. */
  function applyLogFilters() {
    var q = logsQuery();
    var errNode = $('lf-error');
    var bad = q.since && q.until && q.since >= q.until;
    errNode.textContent = bad ? t('logs.err.range') : '';
    show(errNode, !!bad);
    if (bad) return Promise.resolve();
    logsState.query = q;
    saveViewState();
    return loadLogs(false);
  }

  function loadLogs(more) {
    // Refreshes and "Load older" keep the applied filters (the cursor belongs to them).
    var q = appliedLogsQuery();
    if (more && logsState.cursor) q.cursor = logsState.cursor;
    var seq = ++logsState.seq;
    if (!logsState.loaded) show($('logs-loading'), true);
    $('logs-more').disabled = true;
    return api('GET', '/admin/logs' + qs(q)).then(function (res) {
      if (seq !== logsState.seq) return; // a newer request superseded this one
      logsState.loaded = true;
      show($('logs-loading'), false);
      var items = res && Array.isArray(res.items) ? res.items : [];
      if (more) { logsState.items = logsState.items.concat(items); logsState.paged = true; }
      else { logsState.items = items; logsState.paged = false; }
      logsState.cursor = res ? res.next_cursor || null : null;
      renderLogs(items, more);
    }, function (err) {
      show($('logs-loading'), false);
      $('logs-more').disabled = false;
      throw err;
    });
  }

  function statusClass(code) {
    if (code >= 500) return 'text-bg-danger';
    if (code >= 400) return 'text-bg-warning';
    if (code >= 300) return 'text-bg-info';
    if (code >= 200) return 'text-bg-success';
    return 'text-bg-secondary';
  }

  function streamBadge(isStream) {
    return el('span', {
      cls: 'badge ' + (isStream ? 'text-bg-primary' : 'text-bg-light border'),
      text: isStream ? t('badge.stream') : t('badge.plain'),
      attrs: { 'data-testid': 'log-stream-badge', 'data-stream': isStream ? 'true' : 'false' }
    });
  }

  function tokensText(r) {
    if (r.total_tokens === null || r.total_tokens === undefined) return '—';
    return fmtInt(r.total_tokens);
  }

  function renderLogs(items, append) {
    var body = $('logs-body');
    if (!append) clear(body);
    items.forEach(function (r) {
      var tr = el('tr', { attrs: { 'data-testid': 'log-row', 'data-request-id': r.request_id, 'data-ts': r.timestamp, 'data-status': r.status, 'data-stream': r.is_stream ? 'true' : 'false', tabindex: '0' } }, [
        td('col.time', { text: fmtTime(r.timestamp) }),
        td('col.status', {}, [el('span', { cls: 'badge ' + statusClass(r.status), text: String(r.status), attrs: { 'data-testid': 'log-status' } })]),
        td('col.type', {}, [streamBadge(!!r.is_stream)]),
        td('col.request', {}, [el('span', { cls: 'fg-cell-text fg-mono', text: (r.method || '') + ' ' + (r.path || ''), title: r.path || '' })]),
        td('col.source', {}, [el('span', { cls: 'fg-cell-text', text: r.source_path || r.key_id || t('top.nokey'), title: r.key_id || '' })]),
        td('col.model', {}, [el('span', { cls: 'fg-cell-text', text: r.model || '—' })]),
        td('col.latency', { cls: 'text-end', text: fmtMs(r.duration_ms) }),
        td('col.ttfb', { cls: 'text-end', text: fmtMs(r.ttfb_ms) }),
        td('col.bytes', { cls: 'text-end', text: fmtBytes(r.request_bytes) + ' / ' + fmtBytes(r.response_bytes) }),
        td('col.tokens', { cls: 'text-end', text: tokensText(r), attrs: { 'data-testid': 'log-tokens' } })
      ]);
      var open = function () { showLogDetail(r); };
      tr.addEventListener('click', open);
      tr.addEventListener('keydown', function (ev) { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); open(); } });
      body.appendChild(tr);
    });
    var total = logsState.items.length;
    var applied = appliedLogsQuery();
    var filtered = !!(applied.key_id || applied.status || applied.is_stream || applied.model || applied.since || applied.until);
    emptyText($('logs-empty'), filtered ? 'logs.nomatch' : 'logs.empty');
    show($('logs-empty'), total === 0);
    $('logs-count').textContent = total ? t('logs.count', { n: fmtInt(total) }) : '';
    show($('logs-more'), !!logsState.cursor);
    $('logs-more').disabled = false;
  }

  var DETAIL_FIELDS = ['request_id', 'timestamp', 'status', 'outcome', 'error_code', 'is_stream', 'method', 'path', 'target_url',
    'model', 'key_id', 'source_path', 'client_ip', 'user_agent', 'duration_ms', 'ttfb_ms', 'request_bytes', 'response_bytes',
    'prompt_tokens', 'completion_tokens', 'total_tokens'];

  var logModal = null;
  function renderDetail(r) {
    var dl = $('log-detail-body');
    clear(dl);
    DETAIL_FIELDS.forEach(function (f) {
      var v = r[f];
      var node;
      if (f === 'is_stream') node = el('dd', {}, [streamBadge(!!v)]);
      else if (f === 'status') node = el('dd', {}, [el('span', { cls: 'badge ' + statusClass(v), text: String(v) })]);
      else {
        var text;
        if (v === null || v === undefined || v === '') text = '—';
        else if (f === 'timestamp') text = fmtTime(v) + '  (' + v + ')';
        else if (f === 'duration_ms' || f === 'ttfb_ms') text = fmtMs(v);
        else if (f === 'request_bytes' || f === 'response_bytes') text = fmtInt(v) + ' B';
        else text = typeof v === 'object' ? JSON.stringify(v) : String(v);
        node = el('dd', { text: text, attrs: { 'data-field': f } });
      }
      dl.appendChild(el('dt', { text: t('f.' + f) }));
      dl.appendChild(node);
    });
  }

  function showLogDetail(r) {
    renderDetail(r);
    if (!logModal) logModal = new window.bootstrap.Modal($('log-modal'));
    logModal.show();
    // Fetch the stored record so the view shows the authoritative version.
    if (r.request_id) {
      api('GET', '/admin/logs/' + encodeURIComponent(r.request_id)).then(function (full) {
        // Request ids come from clients and can repeat: the newest record with this id may be
        // another request (even an unauthenticated one); only the same request replaces it.
        if (full && full.request_id === r.request_id && full.timestamp === r.timestamp &&
            full.method === r.method && full.path === r.path) renderDetail(full);
      }, function (err) { if (err.status !== 404) showError(err); });
    }
  }

  // ---------------------------------------------------------------- wiring
  function bind() {
    $('lang-select').addEventListener('change', function () {
      lang = this.value === 'zh' ? 'zh' : 'en';
      try { localStorage.setItem(LANG_KEY, lang); } catch (e) { /* ignore */ }
      applyI18n();
      if (editKey) setKeepText(editKey);
      if (signedIn) {
        if (chart) { chart.destroy(); chart = null; }
        refreshAll(false);
      }
    });

    $('signin-form').addEventListener('submit', function (ev) {
      ev.preventDefault();
      var tok = $('signin-token').value.trim();
      var errNode = $('signin-error');
      if (!tok) { errNode.textContent = t('signin.empty'); show(errNode, true); return; }
      var btn = this.querySelector('button[type=submit]');
      btn.disabled = true;
      verifyToken(tok).then(function (ok) {
        btn.disabled = false;
        if (ok) { setToken(tok); $('signin-token').value = ''; showApp(); }
        else { errNode.textContent = t('signin.invalid'); show(errNode, true); }
      }, function (err) {
        btn.disabled = false;
        errNode.textContent = err.message; show(errNode, true);
      });
    });

    $('signout-btn').addEventListener('click', function () {
      setToken(null);
      hideNewKey();
      showSignin('');
    });

    var tabs = document.querySelectorAll('[data-tab]');
    for (var i = 0; i < tabs.length; i++) {
      tabs[i].addEventListener('click', function () { selectTab(this.getAttribute('data-tab')); });
    }

    $('refresh-btn').addEventListener('click', function () { refreshAll(true); });
    $('quick-refresh').addEventListener('click', function () { refreshAll(true); });
    $('quick-logs').addEventListener('click', function () { selectTab('logs'); });
    $('quick-create').addEventListener('click', function () {
      selectTab('keys');
      $('kf-source').focus();
    });
    $('autorefresh-toggle').addEventListener('change', function () {
      if (this.checked) { startTimer(); refreshAll(false); } else stopTimer();
      var txt = $('last-updated').textContent.replace(/ \(.*\)$/, '');
      $('last-updated').textContent = txt + (this.checked ? '' : ' (' + t('status.paused') + ')');
    });
    $('error-close').addEventListener('click', clearError);

    var wbtns = document.querySelectorAll('[data-window]');
    for (i = 0; i < wbtns.length; i++) {
      wbtns[i].addEventListener('click', function () {
        setWindow(this.getAttribute('data-window'));
        saveViewState();
        loadMetrics().catch(showError);
      });
    }

    $('key-form').addEventListener('submit', submitKeyForm);
    $('kf-never').addEventListener('change', function () { $('kf-days').disabled = this.checked; });
    $('new-key-copy').addEventListener('click', copyNewKey);
    $('new-key-dismiss').addEventListener('click', hideNewKey);
    $('confirm-ok').addEventListener('click', onConfirmOk);
    ['confirm-modal', 'edit-modal', 'log-modal'].forEach(function (id) {
      var node = $(id);
      [['show', 'showing'], ['shown', 'shown'], ['hide', 'hiding'], ['hidden', 'hidden']].forEach(function (e) {
        node.addEventListener(e[0] + '.bs.modal', function () { node.setAttribute('data-modal', e[1]); });
      });
    });
    // Escape while a dialog still fades in: the focus is still on what opened it (Bootstrap
    // moves it into the dialog, and listens for Escape there, only once shown) and Bootstrap
    // ignores hide() mid-fade, so the key did nothing. It closes the dialog once shown.
    document.addEventListener('keydown', function (ev) {
      if (ev.key !== 'Escape') return;
      ['confirm-modal', 'edit-modal', 'log-modal'].forEach(function (id) {
        var node = $(id);
        var modal = window.bootstrap && window.bootstrap.Modal.getInstance(node);
        if (modal && node.getAttribute('data-modal') === 'showing') hideModal(modal, node);
      });
    });
    $('edit-form').addEventListener('submit', submitEdit);
    $('ke-expiry').addEventListener('change', function () { syncExpiryRows(); syncPastWarning(); });
    $('ke-at').addEventListener('input', syncPastWarning);
    $('ke-at').addEventListener('change', syncPastWarning);
    // When the dialog closes, the focus goes back to the key's Edit button (the list may have
    // been drawn again meanwhile: found by the key's id), not to the top of the page.
    $('edit-modal').addEventListener('hidden.bs.modal', function () {
      var id = editFocusId;
      editFocusId = null;
      if (id) focusEdit(id);
    });
    // The log detail and the confirmation dialog give the focus back to what opened them (a log
    // row, a key's button) when they close, if it is still on the page; it went to the body.
    ['log-modal', 'confirm-modal'].forEach(function (id) {
      var node = $(id);
      node.addEventListener('show.bs.modal', function () {
        node.fgOpener = document.activeElement !== document.body ? document.activeElement : null;
      });
      node.addEventListener('hidden.bs.modal', function () {
        var opener = node.fgOpener;
        node.fgOpener = null;
        if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      });
    });
    // A confirmation opens on a button, so Enter answers it: on Cancel, as every confirmed
    // action (disable, rotate, delete) cuts clients off.
    $('confirm-modal').addEventListener('shown.bs.modal', function () { $('confirm-cancel').focus(); });

    $('keys-filter').addEventListener('submit', function (ev) {
      ev.preventDefault();
      keysState.offset = 0;
      saveViewState();
      loadKeys().catch(showError);
    });
    $('kfl-status').addEventListener('change', function () { keysState.offset = 0; saveViewState(); loadKeys().catch(showError); });
    $('keys-prev').addEventListener('click', function () {
      keysState.offset = Math.max(0, keysState.offset - KEYS_PAGE);
      loadKeys().catch(showError);
    });
    $('keys-next').addEventListener('click', function () {
      keysState.offset += KEYS_PAGE;
      loadKeys().catch(showError);
    });

    $('logs-filter').addEventListener('submit', function (ev) { ev.preventDefault(); applyLogFilters().catch(showError); });
    // Selects apply at once; the time range (typed a part at a time) on Apply or Enter.
    ['lf-key', 'lf-status', 'lf-stream'].forEach(function (id) {
      $(id).addEventListener('change', function () { applyLogFilters().catch(showError); });
    });
    $('lf-reset').addEventListener('click', function () {
      ['lf-key', 'lf-status', 'lf-stream', 'lf-model', 'lf-since', 'lf-until'].forEach(function (id) { $(id).value = ''; });
      applyLogFilters().catch(showError);
    });
    $('logs-more').addEventListener('click', function () { loadLogs(true).catch(showError); });
    $('lf-export').addEventListener('click', function () { exportLogs().catch(showError); });

    // Pause the timer while the tab is hidden; catch up when it is shown again.
    document.addEventListener('visibilitychange', function () {
      if (!signedIn) return;
      if (document.hidden) stopTimer();
      else if ($('autorefresh-toggle').checked) { startTimer(); refreshAll(false); }
    });
  }

  /** The tab named by the page URL: M-FastGate's /admin/ui/keys and /admin/ui/logs. */
  function tabFromPath() {
    var m = /\/admin\/ui\/(keys|logs)$/.exec(window.location.pathname);
    return m ? m[1] : null;
  }

  // ---------------------------------------------------------------- view state in the address
  // The metrics window and the applied filters live in the query string, so a reload (or a
  // shared link) shows the same view. Never the token: it is taken out of the address at once.
  /** Show `w`'s metrics window button as the pressed one. */
  function setWindow(w) {
    metricsWindow = w;
    var wbtns = document.querySelectorAll('[data-window]');
    for (var i = 0; i < wbtns.length; i++) {
      var on = wbtns[i].getAttribute('data-window') === w;
      wbtns[i].classList.toggle('active', on);
      wbtns[i].setAttribute('aria-pressed', on ? 'true' : 'false');
    }
  }

  function saveViewState() {
    var url;
    try { url = new URL(window.location.href); } catch (e) { return; }
    var logs = appliedLogsQuery();
    var params = {
      window: metricsWindow === '24h' ? '' : metricsWindow,
      key_status: $('kfl-status').value,
      key_source: keysState.source || '',
      log_key: logs.key_id,
      log_status: logs.status,
      log_stream: logs.is_stream,
      log_model: logs.model,
      log_since: logs.since,
      log_until: logs.until
    };
    for (var name in params) {
      if (!Object.prototype.hasOwnProperty.call(params, name)) continue;
      if (params[name]) url.searchParams.set(name, params[name]); else url.searchParams.delete(name);
    }
    var next = url.pathname + (url.searchParams.toString() ? '?' + url.searchParams.toString() : '') + url.hash;
    if (next !== window.location.pathname + window.location.search + window.location.hash) {
      window.history.replaceState(window.history.state, '', next);
    }
  }

  function restoreViewState() {
    var q;
    try { q = new URL(window.location.href).searchParams; } catch (e) { return; }
    var w = q.get('window');
    var known = Array.prototype.some.call(document.querySelectorAll('[data-window]'), function (b) {
      return b.getAttribute('data-window') === w;
    });
    if (known) setWindow(w);
    var pick = function (id, value) {
      var sel = $(id);
      for (var j = 0; j < sel.options.length; j++) if (sel.options[j].value === value) sel.value = value;
    };
    pick('kfl-status', q.get('key_status') || '');
    $('kfl-source').value = q.get('key_source') || '';
    keysState.source = $('kfl-source').value.trim();
    var key = q.get('log_key');
    if (key) {
      var sel = $('lf-key');
      var has = false;
      for (var k = 0; k < sel.options.length; k++) if (sel.options[k].value === key) has = true;
      if (!has) sel.appendChild(el('option', { text: key, attrs: { value: key } }));
      sel.value = key;
    }
    pick('lf-status', q.get('log_status') || '');
    pick('lf-stream', q.get('log_stream') || '');
    $('lf-model').value = q.get('log_model') || '';
    $('lf-since').value = toLocalInput(q.get('log_since'));
    $('lf-until').value = toLocalInput(q.get('log_until'));
    logsState.query = logsQuery();
  }

  function init() {
    applyI18n();
    bind();
    restoreViewState();
    var first = tabFromPath();
    if (first) selectTab(first, true);
    window.addEventListener('popstate', function () { selectTab(tabFromPath() || 'dashboard', true); });
    start();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();

// mailtalk's one page script. Data from the server is written with textContent only,
// never innerHTML: nothing in a subject, a name or a message can become markup.
"use strict";
(function () {
  const body = document.body;
  const kind = body.dataset.kind;          // "user" (sender's pages) or "link" (recipient)
  const you = body.dataset.you || "";
  let current = body.dataset.mailId || ""; // the room shown
  let sender = body.dataset.sender || "";  // whose presence a link page shows
  let ws = null, retry = 0, lastActivity = 0, opened = false;
  let seen = new Set();                    // message ids shown in the current room
  let names = {};                          // address -> display name (the mail's headers)
  let baseTitle = document.title, unread = 0;
  const pending = [];                      // messages written while not connected
  const $ = (id) => document.getElementById(id);
  const phone = window.matchMedia("(max-width: 59.99rem)");
  body.classList.add("js");

  // People by their display name from the mail's From/To/Cc, the address beside it
  // (as a tooltip where space is short); the address alone when the mail had no name.
  function person(addr) {
    const n = names[(addr || "").toLowerCase()];
    return n ? n : addr;
  }
  function personFull(addr) {
    const n = names[(addr || "").toLowerCase()];
    return n ? n + " <" + addr + ">" : addr;
  }

  // One time format everywhere, in the reader's time zone: "14:05" today, else
  // "Tue 1 Dec, 14:05" (with the year when it is not this year).
  function fmtTime(ms) {
    const d = new Date(ms), now = new Date();
    if (isNaN(d.getTime())) return "";
    const time = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
    if (d.toDateString() === now.toDateString()) return time;
    const opts = {weekday: "short", day: "numeric", month: "short"};
    if (d.getFullYear() !== now.getFullYear()) opts.year = "numeric";
    return d.toLocaleDateString([], opts) + ", " + time;
  }
  function showTimes() {
    for (const el of document.querySelectorAll("[data-ts]")) {
      const ts = parseFloat(el.dataset.ts);
      if (ts) el.textContent = fmtTime(ts * 1000);
    }
  }

  // Unread messages in the page title while the page is not looked at.
  function countUnread() {
    unread++;
    document.title = "(" + unread + ") " + baseTitle;
  }
  function clearUnread() {
    if (document.hidden || !document.hasFocus()) return;
    unread = 0;
    document.title = baseTitle;
  }
  document.addEventListener("visibilitychange", clearUnread);
  window.addEventListener("focus", clearUnread);

  function send(obj) {
    if (ws && ws.readyState === 1) { ws.send(JSON.stringify(obj)); return true; }
    return false;
  }
  function setText(id, text) { const el = $(id); if (el) el.textContent = text; }
  function setConn(text) { setText("conn", text); }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(proto + "//" + location.host + body.dataset.ws);
    ws.onopen = function () {
      retry = 0; setConn("");
      body.dataset.connected = "yes";
      // A link page tells the server once per page load (not on reconnects) that the
      // recipient opened it: the sender is notified.
      if (kind === "link" && !opened) { opened = true; send({type: "open"}); }
      if (current) send({type: "join", mail_id: current});
      while (pending.length) send(pending.shift());
    };
    ws.onmessage = function (ev) {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (m && typeof m === "object") handle(m);
    };
    ws.onclose = function (ev) {
      body.dataset.connected = "no";
      if (ev.code === 4001) { location.href = "/login"; return; }
      setConn("Connection lost; reconnecting\u2026");
      setTimeout(connect, Math.min(30000, 1000 * Math.pow(2, retry++)));
    };
  }

  // --- rendering

  function renderMail(mail) {
    names = mail.names || {};
    setText("mail-subject", mail.subject || "(no subject)");
    setText("mail-from", personFull(mail.sender || ""));
    if (Array.isArray(mail.recipients)) setText("mail-to", mail.recipients.map(personFull).join(", "));
    const date = $("mail-date");
    if (date) {
      date.dateTime = mail.date || "";
      date.textContent = mail.date ? fmtTime(Date.parse(mail.date)) : "";
    }
    setText("mail-body", mail.body_text || "");
    const pending = $("mail-pending");
    if (pending) pending.hidden = !!mail.recorded;
    for (const el of document.querySelectorAll(".peer-name")) el.textContent = personFull(mail.sender);
    baseTitle = (mail.subject || "(no subject)") + " \u2013 mailtalk";
    document.title = unread ? "(" + unread + ") " + baseTitle : baseTitle;
  }

  function appendMessage(m) {
    if (seen.has(m.id)) return;
    seen.add(m.id);
    const li = document.createElement("li");
    li.className = m.author === you ? "msg mine" : "msg";
    const head = document.createElement("div");
    head.className = "head";
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = person(m.author);
    who.title = m.author;
    const when = document.createElement("time");
    when.dateTime = new Date(m.ts * 1000).toISOString();
    when.textContent = fmtTime(m.ts * 1000);
    head.append(who, when);
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = m.text;
    li.append(head, text);
    const list = $("messages");
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  // A link opened from more than one browser is marked: it may be in other hands.
  function setMembers(members, shared) {
    const marked = new Set(shared || []);
    setText("members", (members || []).map(function (m) {
      return marked.has(m.toLowerCase()) ? person(m) + " (opened in more than one browser)"
                                         : person(m);
    }).join(", "));
  }

  // "offline" is said once: by the banner, which also says what writing then means.
  function setPeerStatus(status) {
    if (kind !== "link") return;
    const line = $("peer-status");
    if (line) {
      line.textContent = status === "unknown"
        ? "Whether " + person(sender) + " is online cannot be seen just now"
        : person(sender) + " is " + status;
      line.hidden = status === "offline";
    }
    const note = $("offline-note");
    if (note) note.hidden = status !== "offline";
  }

  function setMyStatus(status, mode) {
    const b = $("my-status");
    if (b) { b.textContent = status; b.className = "badge badge-" + status; }
    const sel = $("mode");
    if (sel && mode) sel.value = mode;
  }

  function listItem(mailId) {
    const items = document.querySelectorAll("#conversations li");
    for (const li of items) if (li.dataset.mailId === mailId) return li;
    return null;
  }

  function ensureListItem(mailId, mail) {
    let li = listItem(mailId);
    if (!li) {
      li = document.createElement("li");
      li.dataset.mailId = mailId;
      const a = document.createElement("a");
      a.href = "/m/" + encodeURIComponent(mailId);
      for (const cls of ["subj", "unread", "who", "when"]) {
        const s = document.createElement("span");
        s.className = cls;
        a.append(s);
      }
      a.querySelector(".unread").hidden = true;
      li.append(a);
      const empty = $("empty");
      if (empty) empty.hidden = true;
    }
    if (mail) li.querySelector(".subj").textContent = mail.subject || "(no subject)";
    const when = li.querySelector(".when");
    when.dataset.ts = String(Date.now() / 1000);
    when.textContent = fmtTime(Date.now());
    $("conversations").prepend(li);   // newest activity first
    return li;
  }

  function bumpUnread(mailId) {
    const li = ensureListItem(mailId, null);
    const u = li.querySelector(".unread");
    u.textContent = String((parseInt(u.textContent, 10) || 0) + 1);
    u.hidden = false;
  }

  function markCurrent() {
    for (const li of document.querySelectorAll("#conversations li")) {
      li.classList.toggle("current", li.dataset.mailId === current);
      if (li.dataset.mailId === current) li.querySelector(".unread").hidden = true;
    }
  }

  function switchTo(mailId, mail) {
    current = mailId;
    seen = new Set();
    $("messages").replaceChildren();
    if (mail) renderMail(mail);
    $("conv").hidden = false;
    history.replaceState(null, "", "/m/" + encodeURIComponent(mailId));
    markCurrent();
    send({type: "join", mail_id: mailId});
  }

  function notify(title, text) {
    if (!("Notification" in window) || Notification.permission !== "granted") return;
    if (!document.hidden && document.hasFocus()) return;
    try { new Notification(title, {body: text}); } catch (e) { /* not allowed here */ }
  }

  // --- frames from the server

  function handle(m) {
    switch (m.type) {
      case "hello":
        if (kind === "user") setMyStatus(m.status, m.mode);
        break;
      case "room":
        if (!m.mail || m.mail.mail_id !== current) return;
        renderMail(m.mail);
        if (kind === "link") sender = m.mail.sender;
        seen = new Set();
        $("messages").replaceChildren();
        (m.messages || []).forEach(appendMessage);
        setMembers(m.members, m.shared);
        setPeerStatus(m.sender_status);
        readUpTo(m.messages);
        break;
      case "message":
        if (m.author !== you) { notify(person(m.author), m.text); countUnread(); }
        if (m.mail_id === current) {
          appendMessage(m);
          readUpTo([m]);
        } else if (kind === "user") {
          bumpUnread(m.mail_id);
        }
        clearUnread();
        break;
      case "resync":     // the service may have missed events: the room again, whole
        if (current) send({type: "join", mail_id: current});
        break;
      case "mail":       // the record came after the page opened: show it now
        if (m.mail && m.mail_id === current) renderMail(m.mail);
        break;
      case "opened":
        if (kind !== "user") return;
        {
          const who = ensureListItem(m.mail_id, m.mail).querySelector(".who");
          const names = who.textContent ? who.textContent.split(", ") : [];
          if (!names.includes(m.recipient)) { names.push(m.recipient); who.textContent = names.join(", "); }
        }
        notify(m.recipient + " opened your mail", (m.mail && m.mail.subject) || "(no subject)");
        // Show the mail at once (Fig. 5), unless the user is writing in another chat.
        if (m.mail_id !== current && !$("text").value) switchTo(m.mail_id, m.mail);
        markCurrent();
        break;
      case "members":
        if (m.mail_id === current) setMembers(m.members, m.shared);
        break;
      case "presence":
        if (m.self) setMyStatus(m.status, m.mode);
        else if (m.account === sender) setPeerStatus(m.status);
        break;
      case "error":
        setConn({too_long: "Not sent: the message is too long.",
                 empty: "Not sent: the message is empty.",
                 forbidden: "Not allowed in this conversation.",
                 rate_limited: "Not sent: too many messages; wait a moment."}[m.error] ||
               "Error: " + m.error);
        break;
    }
  }

  function readUpTo(msgs) {
    if (!msgs || !msgs.length) return;
    send({type: "read", mail_id: current, up_to: msgs[msgs.length - 1].id});
  }

  // --- what the user does

  function activity() {
    const now = Date.now();
    if (now - lastActivity > 15000) { lastActivity = now; send({type: "activity"}); }
  }
  for (const ev of ["keydown", "mousedown", "touchstart", "focus"]) {
    window.addEventListener(ev, activity, {passive: true});
  }

  const compose = $("compose");
  const textBox = $("text");
  compose.addEventListener("submit", function (ev) {
    ev.preventDefault();
    const text = textBox.value;
    if (!text.trim() || !current) return;
    const frame = {type: "send", mail_id: current, text: text};
    textBox.value = "";
    if (send(frame)) setConn("");
    else { pending.push(frame); setConn("Not connected yet: the message goes out on connecting."); }
  });
  textBox.addEventListener("keydown", function (ev) {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); compose.requestSubmit(); }
  });

  const digests = $("digests");
  if (digests) digests.addEventListener("change", function () {
    send({type: "digests", on: digests.checked});
  });

  const mode = $("mode");
  if (mode) mode.addEventListener("change", function () { send({type: "status", mode: mode.value}); });

  const nb = $("notify");
  if (nb && "Notification" in window && Notification.permission === "default") {
    nb.hidden = false;
    nb.addEventListener("click", function () {
      Notification.requestPermission().then(function () { nb.hidden = true; });
    });
  }

  // On a phone the sender's page opens on the chat: the mail is folded (one tap
  // unfolds it); the recipient, who came from the mail, sees it first.
  const mailBox = $("mail-box");
  if (mailBox && kind === "user" && phone.matches && current) {
    mailBox.open = false;
    $("conv").scrollIntoView({block: "start"});
  }

  showTimes();
  markCurrent();
  connect();
})();

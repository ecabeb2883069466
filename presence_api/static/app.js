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
  const pending = [];                      // messages written while not connected
  const $ = (id) => document.getElementById(id);
  body.classList.add("js");

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
    setText("mail-subject", mail.subject || "(no subject)");
    setText("mail-from", mail.sender || "");
    if (Array.isArray(mail.recipients)) setText("mail-to", mail.recipients.join(", "));
    setText("mail-date", mail.date || "");
    setText("mail-id", mail.mail_id || "");
    setText("mail-body", mail.body_text || "");
    const pending = $("mail-pending");
    if (pending) pending.hidden = !!mail.recorded;
    if (kind === "user") document.title = (mail.subject || "(no subject)") + " \u2013 mailtalk";
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
    who.textContent = m.author;
    const when = document.createElement("time");
    when.textContent = new Date(m.ts * 1000).toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
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
      return marked.has(m.toLowerCase()) ? m + " (opened in more than one browser)" : m;
    }).join(", "));
  }

  function setPeerStatus(status) {
    if (kind !== "link") return;
    setText("peer-status", sender + " is " + status);
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
        if (kind === "user") renderMail(m.mail);
        else sender = m.mail.sender;
        seen = new Set();
        $("messages").replaceChildren();
        (m.messages || []).forEach(appendMessage);
        setMembers(m.members, m.shared);
        setPeerStatus(m.sender_status);
        readUpTo(m.messages);
        break;
      case "message":
        if (m.mail_id === current) {
          appendMessage(m);
          readUpTo([m]);
          if (m.author !== you) notify(m.author, m.text);
        } else if (kind === "user") {
          bumpUnread(m.mail_id);
          notify(m.author, m.text);
        }
        break;
      case "opened":
        if (kind !== "user") return;
        {
          const who = ensureListItem(m.mail_id, m.mail).querySelector(".who");
          const names = who.textContent ? who.textContent.split(", ") : [];
          if (!names.includes(m.recipient)) { names.push(m.recipient); who.textContent = names.join(", "); }
        }
        notify(m.recipient + " opened your mail", (m.mail && m.mail.subject) || m.mail_id);
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

  markCurrent();
  connect();
})();

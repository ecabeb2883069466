-- miltertest script: the real, running sending milter (`mailtalk milter`) as an MTA
-- sees it. Run: miltertest -D socket=inet:PORT@HOST -s tests/e2e/sending.lua
-- tests/e2e/test_miltertest.py runs it and checks the Mail-ID it prints.

if socket == nil then error "define socket: miltertest -D socket=inet:PORT@HOST" end

local function open()
    local conn = mt.connect(socket, 20, 0.1)
    if conn == nil then error("cannot connect to " .. socket) end
    if mt.conninfo(conn, "client.test", "127.0.11.9") ~= nil then error "conninfo" end
    if mt.helo(conn, "client.test") ~= nil then error "helo" end
    return conn
end

local function check(ok, what)
    if not ok then error("FAILED: " .. what) end
    mt.echo("ok: " .. what)
end

local function send(conn, login, qid, forged)
    if login ~= nil then
        mt.macro(conn, SMFIC_MAIL, "{auth_authen}", login, "i", qid)
    else
        mt.macro(conn, SMFIC_MAIL, "i", qid)
    end
    if mt.mailfrom(conn, "<alice@a.test>") ~= nil then error "mailfrom" end
    if mt.rcptto(conn, "<bob@b.test>") ~= nil then error "rcptto" end
    if mt.header(conn, "From", "Alice <alice@a.test>") ~= nil then error "header" end
    if mt.header(conn, "Subject", "miltertest " .. qid) ~= nil then error "header" end
    if mt.header(conn, "Message-ID", "<" .. qid .. "@a.test>") ~= nil then error "header" end
    for _, h in ipairs(forged) do
        if mt.header(conn, h[1], h[2]) ~= nil then error "header" end
    end
    if mt.eoh(conn) ~= nil then error "eoh" end
    if mt.bodystring(conn, "Hello Bob.\r\n") ~= nil then error "body" end
    if mt.eom(conn) ~= nil then error "eom" end
    check(mt.getreply(conn) == SMFIR_CONTINUE or mt.getreply(conn) == SMFIR_ACCEPT,
          qid .. ": accepted")
end

-- 1. An authenticated sender of our domain, with a forged X-Mail-ID (odd case, twice).
local conn = open()
send(conn, "alice", "MTQID1", {{"x-mail-id", "forgedforgedforgedforged"},
                               {"X-MAIL-ID", "forged2forged2forged2forged2"}})
check(mt.eom_check(conn, MT_HDRADD, "X-Messenger-Account", "alice@a.test"),
      "authenticated: X-Messenger-Account added")
check(mt.eom_check(conn, MT_HDRADD, "X-Mail-ID"), "authenticated: X-Mail-ID added")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Mail-ID"), "authenticated: forged X-Mail-ID deleted")
local mid = mt.getheader(conn, "X-Mail-ID", 0)
if mid == nil or string.find(mid, "^[A-Za-z0-9_-]+$") == nil or #mid < 22 or #mid > 64 then
    error("FAILED: bad X-Mail-ID " .. tostring(mid))
end
mt.echo("mail-id: " .. mid)
mt.disconnect(conn)

-- 2. Unauthenticated, with forged copies of all three headers.
conn = open()
send(conn, nil, "MTQID2", {{"X-Messenger-Account", "mallory@a.test"},
                           {"X-Sender-Online", "yes; account=mallory@a.test"},
                           {"X-Mail-Id", "forgedforgedforgedforged"}})
check(not mt.eom_check(conn, MT_HDRADD), "unauthenticated: no header added")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Messenger-Account"),
      "unauthenticated: forged X-Messenger-Account deleted")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Sender-Online"),
      "unauthenticated: forged X-Sender-Online deleted")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Mail-ID"), "unauthenticated: forged X-Mail-ID deleted")
mt.disconnect(conn)

-- 3. A login of a domain that is not ours: nothing added.
conn = open()
send(conn, "alice@elsewhere.test", "MTQID3", {})
check(not mt.eom_check(conn, MT_HDRADD), "foreign login: no header added")
mt.disconnect(conn)
mt.echo("all ok")

"""What comes back after delivery: bounces and spam complaints (issue 12).

report       Report, what one incoming bounce or complaint says, before it is matched
dsn          mail to Reports: RFC 3464 DSNs and RFC 5965 ARF complaints
nonstandard  the bounces real MTAs send without a DSN, through flufl.bounce
mime         reading MIME without ever raising
verp         the envelope sender that names the delivery (bounces+<token>@domain)
ledger       the one owner of what a Report changes: matched to its delivery, stored once
             (replays ignored), the reader's bounce counts and status updated
receiver     mailer's own SMTP receiver, the MX of the bounce domain
mailbox      a bounce mailbox polled over IMAP
webhooks     the mail services' event webhooks: the dispatch; sns (Amazon SES through
             SNS), providers (Postmark, SendGrid, Mailgun), payload (what they share)
"""

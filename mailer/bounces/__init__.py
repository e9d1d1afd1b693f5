"""What comes back after delivery: bounces and spam complaints (issue 12).

report    Report, what one incoming bounce or complaint says, before it is matched
dsn       mail to Report: RFC 3464 DSNs, the non-standard bounces real MTAs send
          (flufl.bounce), RFC 5965 ARF complaints
verp      the envelope sender that names the delivery (bounces+<token>@domain)
ledger    the one owner of what a Report changes: matched to its delivery, stored once
          (replays ignored), the reader's bounce counts and status updated
receiver  mailer's own SMTP receiver, the MX of the bounce domain
mailbox   a bounce mailbox polled over IMAP
webhooks  the mail services' event webhooks (SES through SNS, Postmark, SendGrid, Mailgun)
"""

#!/usr/bin/env python3
"""Generate datasets/support/{train,validation,test}.jsonl: Acme Cloud customer support.

A small, deterministic, *learnable* chat dataset for LoRA fine-tuning demos and `ft eval`:
60 intents (12 per topic: billing, storage, compute, account, networking), 5 paraphrased user
questions per intent, one canonical answer per intent. Every answer is exactly two sentences:

    <a specific fact or steps from the FACT SHEET below>. <the fixed closing sentence of the topic>

Split (300 examples): for each intent, one paraphrase is held out and the other four go to train.
Half of the intents (6 per topic) put their held-out paraphrase into validation, the other half into
test -> 240 / 30 / 30. So every validation/test intent is also in train, with a different wording,
and the answer to a held-out question is exactly the training answer of its intent.

Run from the repository root (standard library only; byte-identical output on every run):

    python3 scripts/datasets/make_support.py            # writes datasets/support/*.jsonl
    python3 scripts/datasets/make_support.py --check    # regenerate in memory, compare with disk
"""

import argparse
import json
import os
import random
import sys

SEED = 20240601
SYSTEM = "You are Acme Cloud's support assistant."
OUT_DIR = os.path.join("datasets", "support")

# ---------------------------------------------------------------------------------------------
# Fact sheet (everything the answers state comes from here; kept in sync with the README).
# ---------------------------------------------------------------------------------------------
FACTS = """\
Regions: us-east-1 (Virginia), us-west-2 (Oregon), eu-central-1 (Frankfurt), ap-south-1 (Mumbai).
Plans: Starter (free), Business ($99 per month: phone support, SAML single sign-on, account manager).
Billing: invoices on the 1st of each month; Visa/Mastercard/American Express, bank transfer above
  $500 per month; free tier 5 GB storage + 750 h a1.small per month for 12 months; refunds for
  accidental charges within 30 days; services suspended 14 days after an invoice is overdue;
  USD or EUR, switchable once per year; 99.9% SLA, 10% credit claimable within 30 days.
Storage: $0.02/GB-month standard, $0.004/GB-month archive; first 100 GB egress free, then
  $0.05/GB; objects up to 5 TB, multipart above 5 GB; bucket names 3-63 chars, lowercase letters,
  numbers, hyphens; 100 buckets per account; presigned URLs up to 7 days; archive restore up to
  12 h, restored copy kept 7 days; deleted buckets unrecoverable; AES-256 at rest by default.
Compute: a1.small 1 vCPU/2 GB $0.01/h, a1.medium 2 vCPU/4 GB $0.02/h, a1.large 4 vCPU/16 GB
  $0.08/h, g1.xlarge GPU $1.20/h (us-east-1, eu-central-1); 20 vCPUs per region; images
  Ubuntu 22.04, Debian 12, Rocky Linux 9; snapshots $0.05/GB-month; stopped instances: disks and
  snapshots still billed; resize needs a stop.
Account: password reset at acme.cloud/reset (link valid 15 minutes); lock for 30 minutes after 5
  failed sign-ins; up to 10 active API keys per user; roles Owner, Admin, Billing, Viewer;
  chat support 24/7 on every plan.
Networking: inbound port 22 only by default; static IP free while attached, $0.005/h unattached;
  load balancer $0.025/h; traffic inside a region free, between regions $0.01/GB; IPv6 everywhere;
  standard DDoS protection free; free TLS certificates; WireGuard VPN gateways.
"""

CLOSINGS = {
    "billing": "Reply here if you need more help with billing.",
    "storage": "Reply here if you need more help with storage.",
    "compute": "Reply here if you need more help with virtual machines.",
    "account": "Reply here if you need more help with your account.",
    "networking": "Reply here if you need more help with networking.",
}

# (topic, intent id, first sentence of the answer, 5 paraphrased questions)
INTENTS = [
    # ---------------------------------------------------------------- billing
    ("billing", "invoice_download",
     "Open Console > Billing > Invoices and click Download next to the month you need to get the PDF invoice.",
     ["How do I download my invoice?",
      "Where can I get a PDF copy of last month's invoice?",
      "I need to download an invoice for my accountant, where do I find it?",
      "Is there a way to export my invoices as PDF?",
      "Can't find where to download invoices in the console"]),
    ("billing", "invoice_date",
     "Acme Cloud issues invoices on the 1st of each month for the previous month's usage and emails them to the billing contact.",
     ["When do you send invoices?",
      "What day of the month am I billed?",
      "When will I receive my monthly invoice?",
      "On which date does Acme Cloud generate the bill?",
      "How often do invoices get issued and when?"]),
    ("billing", "payment_methods",
     "Acme Cloud accepts Visa, Mastercard and American Express cards, and bank transfer for accounts spending over $500 per month.",
     ["What payment methods do you accept?",
      "Can I pay by bank transfer?",
      "Which credit cards does Acme Cloud take?",
      "Do you support paying with Amex?",
      "What are my options for paying the bill?"]),
    ("billing", "change_card",
     "Open Console > Billing > Payment methods, click Add card, then set the new card as default and remove the old one.",
     ["How do I change my credit card?",
      "My card expired, how do I update it?",
      "I want to replace the card on file with a new one.",
      "Where do I update my payment details?",
      "How can I switch the default payment card?"]),
    ("billing", "free_tier",
     "The free tier gives new accounts 5 GB of object storage and 750 hours of a1.small per month for the first 12 months.",
     ["What is included in the free tier?",
      "Is there a free trial?",
      "What do I get for free as a new customer?",
      "How long does the free tier last?",
      "Can I use Acme Cloud for free to start with?"]),
    ("billing", "budget_alert",
     "Open Console > Billing > Budgets, click Create budget, enter a monthly amount and choose the email address that receives the alert.",
     ["How do I set up a budget alert?",
      "Can I get notified when my spending goes over a limit?",
      "I want an email if my bill gets too high.",
      "Is there a way to create a spending alert?",
      "How can I cap or monitor my monthly costs with alerts?"]),
    ("billing", "refund",
     "Refund requests for accidental charges are accepted within 30 days of the invoice date through Console > Billing > Support cases.",
     ["Can I get a refund?",
      "I was charged by mistake, how do I get my money back?",
      "How do I request a refund for an accidental charge?",
      "What is your refund policy?",
      "I forgot to delete a VM and got billed, can you refund it?"]),
    ("billing", "overdue",
     "An invoice that stays unpaid for 14 days becomes overdue and Acme Cloud suspends your running services until the balance is paid.",
     ["What happens if I don't pay my invoice?",
      "My payment failed, will my services be shut down?",
      "How long before an unpaid bill suspends my account?",
      "What happens when an invoice is overdue?",
      "Is there a grace period for late payments?"]),
    ("billing", "tax_id",
     "Open Console > Billing > Tax settings and enter your VAT or tax ID so it appears on all future invoices.",
     ["How do I add my VAT number?",
      "Where do I enter our company tax ID?",
      "Can I get my VAT ID printed on invoices?",
      "I need to add tax information to my billing profile.",
      "How do I update the tax ID on my account?"]),
    ("billing", "currency",
     "Acme Cloud bills in US dollars or euros, and you can switch currency once per year in Console > Billing > Preferences.",
     ["Can I pay in euros?",
      "Which currencies do you bill in?",
      "How do I change my billing currency?",
      "Is it possible to be invoiced in EUR instead of USD?",
      "Can I switch my account from dollars to euros?"]),
    ("billing", "sla_credit",
     "If monthly uptime falls below the 99.9% SLA, you can claim a 10% service credit within 30 days of the incident.",
     ["Do I get credit for an outage?",
      "What is your SLA?",
      "There was downtime yesterday, am I compensated?",
      "How do I claim an SLA credit?",
      "What uptime do you guarantee?"]),
    ("billing", "usage_breakdown",
     "Open Console > Billing > Usage to see a daily cost breakdown by service, region and project for the last 12 months.",
     ["How can I see what I'm being charged for?",
      "Where do I find a breakdown of my costs?",
      "Which service is costing me the most money?",
      "Can I see my daily spending by service?",
      "How do I check my usage so far this month?"]),
    # ---------------------------------------------------------------- storage
    ("storage", "storage_price",
     "Standard object storage costs $0.02 per GB per month, and the archive tier costs $0.004 per GB per month.",
     ["How much does object storage cost?",
      "What is the price per GB for storage?",
      "How much is the archive tier?",
      "What does it cost to store 1 TB of files?",
      "What are your storage prices?"]),
    ("storage", "egress_price",
     "The first 100 GB of data transfer out each month is free, and after that egress costs $0.05 per GB.",
     ["How much do downloads from a bucket cost?",
      "Do you charge for egress?",
      "What is the data transfer out price?",
      "Is bandwidth free when people download my files?",
      "How much free outbound traffic do I get?"]),
    ("storage", "max_object_size",
     "A single object can be up to 5 TB, but uploads larger than 5 GB must use multipart upload.",
     ["What is the maximum file size I can upload?",
      "How big can an object be?",
      "My 8 GB upload fails, is there a size limit?",
      "Is there a limit on object size in a bucket?",
      "Can I upload a 2 TB backup file?"]),
    ("storage", "create_bucket",
     "Open Console > Storage > Buckets, click Create bucket, enter a globally unique name and pick a region.",
     ["How do I create a bucket?",
      "How can I make a new storage bucket?",
      "What are the steps to set up object storage?",
      "I want to start storing files, where do I create a bucket?",
      "Creating a bucket for the first time, how does it work?"]),
    ("storage", "bucket_naming",
     "Bucket names must be 3 to 63 characters long and use only lowercase letters, numbers and hyphens.",
     ["What are the rules for bucket names?",
      "Why is my bucket name invalid?",
      "Can a bucket name contain capital letters?",
      "How long can a bucket name be?",
      "Which characters are allowed in bucket names?"]),
    ("storage", "bucket_limit",
     "Each account can create 100 buckets by default, and you can request a higher limit in Console > Account > Quotas.",
     ["How many buckets can I have?",
      "Is there a limit on the number of buckets?",
      "I hit the bucket limit, can it be raised?",
      "What is the maximum number of buckets per account?",
      "Can I create more than 100 buckets?"]),
    ("storage", "versioning",
     "Open Console > Storage > Buckets, select the bucket, then go to Settings > Versioning and click Enable.",
     ["How do I turn on versioning?",
      "Can I keep old versions of my files?",
      "How do I enable object versioning on a bucket?",
      "Is there a way to protect files from being overwritten?",
      "Where is the versioning setting for buckets?"]),
    ("storage", "presigned_url",
     "Presigned URLs can be valid for up to 7 days, and you create them with the acme storage presign command.",
     ["How do I share a private file with a temporary link?",
      "How long can a presigned URL last?",
      "Can I generate a download link that expires?",
      "What is the maximum expiry for presigned URLs?",
      "How do I create a presigned URL?"]),
    ("storage", "archive_restore",
     "Restoring an object from the archive tier takes up to 12 hours, and the restored copy stays available for 7 days.",
     ["How long does it take to restore from archive?",
      "How do I get a file back from the archive tier?",
      "My archived object is not downloadable, why?",
      "What is the retrieval time for archive storage?",
      "How long does a restored archive object stay available?"]),
    ("storage", "deleted_bucket",
     "Deleted buckets cannot be recovered, so enable versioning and keep backups before you delete anything.",
     ["Can I recover a deleted bucket?",
      "I deleted my bucket by accident, can you restore it?",
      "Is there an undo for deleting a bucket?",
      "How do I get back files from a bucket I removed?",
      "Are deleted buckets kept anywhere?"]),
    ("storage", "encryption",
     "All objects are encrypted at rest with AES-256 by default, and you can supply your own keys in Console > Storage > Encryption.",
     ["Is my data encrypted?",
      "Do you encrypt objects at rest?",
      "Can I use my own encryption keys for storage?",
      "What encryption does object storage use?",
      "Is bucket data encrypted by default?"]),
    ("storage", "static_website",
     "Open the bucket, go to Settings > Static website, click Enable and set index.html as the index document.",
     ["Can I host a static website from a bucket?",
      "How do I serve my website from object storage?",
      "How do I enable static website hosting?",
      "I want to host a simple HTML site on Acme Cloud storage.",
      "Where is the static site option for buckets?"]),
    # ---------------------------------------------------------------- compute
    ("compute", "vm_prices",
     "The a1.small plan has 1 vCPU and 2 GB RAM for $0.01 per hour, and a1.medium has 2 vCPUs and 4 GB RAM for $0.02 per hour.",
     ["How much does a small VM cost?",
      "What are your virtual machine prices?",
      "How much RAM does a1.small have?",
      "What is the cheapest instance you offer?",
      "What's the hourly price of a1.medium?"]),
    ("compute", "launch_vm",
     "Open Console > Compute > Instances, click Launch, choose an image, a size and a region, then add your SSH key.",
     ["How do I create a virtual machine?",
      "How do I launch a new instance?",
      "What are the steps to start a VM?",
      "I'm new here, how do I spin up a server?",
      "Where do I go to create a compute instance?"]),
    ("compute", "vcpu_quota",
     "Each account can run 20 vCPUs per region by default, and you can request more in Console > Account > Quotas.",
     ["How many vCPUs can I use?",
      "I get a quota error when launching a VM.",
      "What is the default CPU limit per region?",
      "Can I raise my vCPU quota?",
      "Why can't I start more instances?"]),
    ("compute", "resize_vm",
     "Stop the instance, open Console > Compute > Instances, choose Actions > Resize, pick the new size and start it again.",
     ["How do I resize my VM?",
      "Can I upgrade my instance to more RAM?",
      "How do I change the size of an instance?",
      "I need more CPU on my server, how do I scale it up?",
      "Is it possible to downgrade a VM to a smaller plan?"]),
    ("compute", "stopped_billing",
     "Stopped instances are not billed for compute hours, but their disks and snapshots are still billed.",
     ["Am I charged for a stopped VM?",
      "Do stopped instances cost money?",
      "If I shut down my server, do I still pay?",
      "Why am I billed for an instance that is off?",
      "Does stopping a VM stop the charges?"]),
    ("compute", "images",
     "Acme Compute offers Ubuntu 22.04, Debian 12 and Rocky Linux 9 images, and you can also upload your own image.",
     ["Which operating systems can I use?",
      "Do you have Ubuntu images?",
      "What OS images are available for VMs?",
      "Can I run Debian on Acme Cloud?",
      "Which Linux distributions do you support?"]),
    ("compute", "ssh_key",
     "Open Console > Compute > SSH keys, click Add key and paste your public key, then select it when you launch an instance.",
     ["How do I add an SSH key?",
      "Where do I upload my public key?",
      "How can I log in to my VM with SSH keys?",
      "I want to use my id_ed25519 key for new instances.",
      "How do I register an SSH key with Acme Cloud?"]),
    ("compute", "snapshot",
     "Open Console > Compute > Instances, choose Actions > Create snapshot, and note that snapshots cost $0.05 per GB per month.",
     ["How do I take a snapshot of my VM?",
      "How can I back up an instance?",
      "How much do snapshots cost?",
      "Can I make a backup of my server's disk?",
      "Where is the snapshot option for instances?"]),
    ("compute", "gpu",
     "The g1.xlarge GPU instance costs $1.20 per hour and is available in us-east-1 and eu-central-1.",
     ["Do you have GPU instances?",
      "How much does a GPU VM cost?",
      "Which regions have GPUs?",
      "Can I rent a GPU for machine learning?",
      "What is the price of g1.xlarge?"]),
    ("compute", "lost_ssh",
     "Use the browser console in Console > Compute > Instances > Connect to log in and add a new SSH key to the instance.",
     ["I lost my SSH key, how do I get into my VM?",
      "I'm locked out of my instance.",
      "How do I access my server without SSH?",
      "My private key is gone, can I still connect?",
      "Is there a web console for instances?"]),
    ("compute", "regions",
     "Acme Cloud runs in us-east-1 (Virginia), us-west-2 (Oregon), eu-central-1 (Frankfurt) and ap-south-1 (Mumbai).",
     ["Which regions do you have?",
      "Where are your data centers?",
      "Do you have a region in Europe?",
      "Is there an Asia region?",
      "What locations can I deploy to?"]),
    ("compute", "reboot",
     "Open Console > Compute > Instances, select the instance and choose Actions > Reboot, then wait about two minutes.",
     ["My VM is not responding, what should I do?",
      "How do I reboot an instance?",
      "How can I restart my server from the console?",
      "My instance is frozen, can I restart it?",
      "Where is the reboot button for VMs?"]),
    # ---------------------------------------------------------------- account
    ("account", "reset_password",
     "Go to acme.cloud/reset, enter your account email and follow the link we send you within 15 minutes.",
     ["I forgot my password.",
      "How do I reset my password?",
      "I can't remember my login password, help!",
      "Where do I change a forgotten password?",
      "How can I recover access if I lost my password?"]),
    ("account", "enable_2fa",
     "Open Console > Account > Security, click Enable two-factor authentication and scan the QR code with an authenticator app.",
     ["How do I enable two-factor authentication?",
      "Can I turn on 2FA?",
      "How do I add an authenticator app to my account?",
      "Is multi-factor authentication supported?",
      "How can I make my login more secure with 2FA?"]),
    ("account", "api_key",
     "Open Console > Account > API keys and click Create key, and note that each user can have up to 10 active keys.",
     ["How do I create an API key?",
      "Where do I get API credentials?",
      "How many API keys can I have?",
      "I need a key to use the Acme API, where is it?",
      "How do I generate an access key for the CLI?"]),
    ("account", "add_team_member",
     "Open Console > Account > Team, click Invite, enter their email address and choose a role for them.",
     ["How do I add a colleague to my account?",
      "How can I invite a team member?",
      "Can several people share one Acme Cloud account?",
      "I want to give my developer access to our account.",
      "How do I add users to my organization?"]),
    ("account", "roles",
     "Acme Cloud has four roles named Owner, Admin, Billing and Viewer, and only an Owner can close the account.",
     ["What user roles are there?",
      "What permissions can I give team members?",
      "What is the difference between Admin and Owner?",
      "Can I give someone read-only access?",
      "Which roles are available for users?"]),
    ("account", "delete_account",
     "Delete all resources, pay any open invoice, then open Console > Account > Settings and click Close account.",
     ["How do I delete my account?",
      "I want to close my Acme Cloud account.",
      "How can I cancel my account completely?",
      "What do I need to do to terminate my account?",
      "Please tell me how to remove my account."]),
    ("account", "change_email",
     "Open Console > Account > Profile, enter the new email address and confirm it with the code we send to that address.",
     ["How do I change my email address?",
      "Can I update the email on my account?",
      "I have a new work email, how do I switch to it?",
      "Where do I edit my login email?",
      "How can I change the address I sign in with?"]),
    ("account", "support_hours",
     "Chat support is available 24/7 on every plan, and phone support is included with the Business plan.",
     ["What are your support hours?",
      "Can I call you on the phone?",
      "Is support available on weekends?",
      "How do I contact support?",
      "Do you offer 24/7 support?"]),
    ("account", "sso",
     "Single sign-on with SAML is available on the Business plan under Console > Account > Security > SSO.",
     ["Do you support SSO?",
      "Can we log in with our company identity provider?",
      "Is SAML single sign-on available?",
      "How do I set up Okta login for Acme Cloud?",
      "Which plan includes single sign-on?"]),
    ("account", "locked_account",
     "Accounts lock for 30 minutes after 5 failed sign-in attempts, or you can unlock yours right away at acme.cloud/reset.",
     ["My account is locked.",
      "Why can't I sign in after entering the wrong password?",
      "How long does an account lockout last?",
      "I typed my password wrong too many times.",
      "How do I unlock my account?"]),
    ("account", "transfer_owner",
     "The current Owner opens Console > Account > Team, selects the new user and chooses Make owner.",
     ["How do I transfer account ownership?",
      "Can I make someone else the owner?",
      "I'm leaving the company, how do I hand over the account?",
      "How do I change the account owner?",
      "Can ownership be moved to another user?"]),
    ("account", "plans",
     "The Starter plan is free, and the Business plan costs $99 per month and adds phone support, single sign-on and an account manager.",
     ["What plans do you offer?",
      "How much is the Business plan?",
      "What's the difference between Starter and Business?",
      "Should I upgrade to Business?",
      "What does the paid plan include?"]),
    # ---------------------------------------------------------------- networking
    ("networking", "firewall_default",
     "New instances only allow inbound traffic on port 22, and you can open more ports in Console > Compute > Firewalls.",
     ["Which ports are open by default?",
      "Why can't I reach my web server on port 80?",
      "What does the default firewall allow?",
      "Is my VM reachable from the internet by default?",
      "What inbound traffic is allowed on a new instance?"]),
    ("networking", "open_port",
     "Open Console > Compute > Firewalls, select the firewall, click Add rule and enter the port and source range.",
     ["How do I open a port?",
      "How can I allow HTTPS traffic to my VM?",
      "How do I add a firewall rule?",
      "I need to open port 443, where do I do that?",
      "How do I let traffic in on a custom port?"]),
    ("networking", "static_ip",
     "Static IPs are free while attached to a running instance and cost $0.005 per hour when left unattached.",
     ["How much does a static IP cost?",
      "Do you charge for reserved IP addresses?",
      "Is an elastic IP free?",
      "Why am I billed for an IP address?",
      "Can I keep a fixed IP for my server?"]),
    ("networking", "load_balancer",
     "A load balancer costs $0.025 per hour, and you create one in Console > Networking > Load balancers.",
     ["Do you offer load balancers?",
      "How much is a load balancer?",
      "How do I create a load balancer?",
      "How can I spread traffic across several VMs?",
      "Where do I set up load balancing?"]),
    ("networking", "private_network",
     "Every region has a private network, and traffic between instances in the same region is free.",
     ["Can my VMs talk to each other privately?",
      "Is there a private network between instances?",
      "Do I pay for traffic between my VMs?",
      "Do you have VPCs?",
      "Is internal traffic in a region free?"]),
    ("networking", "ipv6",
     "IPv6 is supported in all regions, and you enable it per instance in Console > Compute > Instances > Networking.",
     ["Do you support IPv6?",
      "How do I get an IPv6 address for my VM?",
      "Can I enable IPv6 on an instance?",
      "Is IPv6 available in every region?",
      "How do I turn on IPv6?"]),
    ("networking", "custom_domain",
     "Create a CNAME record pointing your domain to the bucket endpoint, then add the domain in the bucket's Settings > Custom domain.",
     ["Can I use my own domain for a bucket?",
      "How do I point a custom domain to my storage?",
      "How do I serve files from cdn.example.com?",
      "How do I set up a CNAME for a bucket?",
      "Can my bucket have a custom hostname?"]),
    ("networking", "ddos",
     "Standard DDoS protection is included free for all instances and load balancers in every region.",
     ["Do you protect against DDoS attacks?",
      "Is DDoS protection included?",
      "Does DDoS protection cost extra?",
      "What happens if my server gets attacked with a flood of traffic?",
      "Are my instances protected from DDoS?"]),
    ("networking", "dns",
     "Open Console > Networking > DNS, click Add zone, enter your domain and point your registrar to the four Acme name servers.",
     ["Do you offer DNS hosting?",
      "How do I manage my domain's DNS with Acme Cloud?",
      "How do I add a DNS zone?",
      "Can I host my domain's DNS records here?",
      "Which name servers should I use for my domain?"]),
    ("networking", "vpn",
     "Open Console > Networking > VPN, click Create gateway and download the WireGuard config for your office router.",
     ["How do I connect my office network to Acme Cloud?",
      "Do you offer a VPN?",
      "How do I set up a site-to-site VPN?",
      "Can I use WireGuard to reach my private network?",
      "How do I create a VPN gateway?"]),
    ("networking", "inter_region",
     "Traffic between different regions costs $0.01 per GB, while traffic inside one region is free.",
     ["How much does cross-region traffic cost?",
      "Do you charge for data transfer between regions?",
      "What is the price for copying data from us-east-1 to eu-central-1?",
      "Is replicating between regions free?",
      "What does inter-region bandwidth cost?"]),
    ("networking", "tls_cert",
     "Open Console > Networking > Certificates, click Request certificate and enter your domain to get a free TLS certificate.",
     ["How do I get an SSL certificate?",
      "Do you provide free TLS certificates?",
      "How can I enable HTTPS for my domain?",
      "Where do I request a certificate?",
      "Can I get a free SSL cert for my load balancer?"]),
]

POLITE_PREFIXES = ["Hi, ", "Hello! ", "Hey, quick question: ", "Good morning. ", "Hi there, ",
                   "Excuse me, ", "Sorry to bother you, but "]
POLITE_SUFFIXES = [" Thanks!", " Thank you.", " Thanks in advance."]


def answer(topic, first):
    return f"{first} {CLOSINGS[topic]}"


def typo(text, rng):
    """Swap two adjacent letters inside one word of length >= 5."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def decorate(question, rng):
    """Deterministic surface variation: polite prefix/suffix, lower case, typo, dropped '?'."""
    q = question
    if rng.random() < 0.12:
        q = typo(q, rng)
    if rng.random() < 0.25:
        p = rng.choice(POLITE_PREFIXES)
        # After "Hi, " / "...: " / "but " the question continues the sentence (lower-case its
        # first letter, except the pronoun "I"); after "Hello! " / "Good morning. " it does not.
        if p.endswith((", ", ": ", "but ")) and not q.startswith(("I ", "I'")):
            q = q[0].lower() + q[1:]
        q = p + q
    elif rng.random() < 0.1:
        q = q + rng.choice(POLITE_SUFFIXES)
    elif rng.random() < 0.15 and q.endswith("?"):
        q = q[:-1]
    if rng.random() < 0.15:
        q = q.lower()
    return q


def check_answer(text):
    words = text.split()
    assert 15 <= len(words) <= 40, (len(words), text)
    # Exactly two sentences: exactly one ". " boundary, ends with ".", no other terminators.
    assert text.endswith("."), text
    assert text.count(". ") == 1, text
    assert "?" not in text and "!" not in text, text


def build():
    rng = random.Random(SEED)
    assert len(INTENTS) == 60
    ids = [i[1] for i in INTENTS]
    assert len(set(ids)) == 60
    by_topic = {}
    for topic, *_ in INTENTS:
        by_topic[topic] = by_topic.get(topic, 0) + 1
    assert all(n == 12 for n in by_topic.values()), by_topic

    # Which intents hold out to validation vs test: 6 per topic each.
    held_to = {}
    for topic in CLOSINGS:
        t_ids = [i[1] for i in INTENTS if i[0] == topic]
        rng.shuffle(t_ids)
        for k, iid in enumerate(t_ids):
            held_to[iid] = "validation" if k < 6 else "test"

    splits = {"train": [], "validation": [], "test": []}
    seen = set()
    for topic, iid, first, questions in INTENTS:
        assert len(questions) == 5, iid
        a = answer(topic, first)
        check_answer(a)
        qs = [decorate(q, rng) for q in questions]
        for q in qs:
            key = " ".join(q.lower().split())
            assert key not in seen, f"duplicate question: {q!r}"
            seen.add(key)
        order = list(range(5))
        rng.shuffle(order)
        for rank, k in enumerate(order):
            split = held_to[iid] if rank == 0 else "train"
            splits[split].append({
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": qs[k]},
                    {"role": "assistant", "content": a},
                ]
            })
    for name in splits:
        rng.shuffle(splits[name])
    assert [len(splits[n]) for n in ("train", "validation", "test")] == [240, 30, 30]
    return splits


def render(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = ap.parse_args()
    splits = build()
    if args.check:
        ok = True
        for name, rows in splits.items():
            path = os.path.join(args.out, f"{name}.jsonl")
            with open(path, encoding="utf-8") as f:
                if f.read() != render(rows):
                    print(f"{path}: differs from the generator's output", file=sys.stderr)
                    ok = False
        sys.exit(0 if ok else 1)
    os.makedirs(args.out, exist_ok=True)
    for name, rows in splits.items():
        with open(os.path.join(args.out, f"{name}.jsonl"), "w", encoding="utf-8", newline="\n") as f:
            f.write(render(rows))
        print(f"{name}: {len(rows)} examples", file=sys.stderr)


if __name__ == "__main__":
    main()

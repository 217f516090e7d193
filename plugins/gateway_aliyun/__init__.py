"""The ``aliyun`` gateway: Alibaba Cloud SMS (Dysmsapi) with filed templates, receipts and replies."""

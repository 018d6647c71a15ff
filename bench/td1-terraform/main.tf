# TD1 as a Terraform/OpenTofu config, for bench/td1.sh: the same AMI lookup, security group,
# key pair and instance as `labctl td1 up`, against LocalStack.
terraform {
  required_providers {
    aws = { source = "hashicorp/aws" }
  }
}

variable "owner" { type = string }
variable "endpoint" { type = string }
variable "public_key" { type = string }

provider "aws" {
  region                      = "us-east-2"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  s3_use_path_style           = true
  endpoints {
    ec2 = var.endpoint
    sts = var.endpoint
  }
}

data "aws_ami" "al2023" {
  most_recent = true
  owners      = ["amazon"]
  filter {
    name   = "name"
    values = ["al2023-ami-2023.*-x86_64"]
  }
}

resource "aws_security_group" "app" {
  name        = "tf-sample-app-${var.owner}"
  description = "TD1 sample app (terraform)"
  ingress {
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_key_pair" "app" {
  key_name   = "tf-sample-app-${var.owner}"
  public_key = var.public_key
}

resource "aws_instance" "app" {
  ami                    = data.aws_ami.al2023.id
  instance_type          = "t3.micro"
  vpc_security_group_ids = [aws_security_group.app.id]
  key_name               = aws_key_pair.app.key_name
  user_data              = file("${path.module}/user-data.sh")
  tags                   = { Name = "tf-sample-app-${var.owner}" }
}

output "public_ip" { value = aws_instance.app.public_ip }

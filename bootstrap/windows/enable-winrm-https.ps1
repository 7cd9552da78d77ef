#ps1_sysnative
# Beachhead: enable WinRM over HTTPS with a certificate Beachhead provides.
#
# Idempotent: run it again and it changes only what differs. Stops at the first error
# with a message that says what failed (exit status 1). Written for Windows PowerShell
# 5.1 and PowerShell 7; it has never run on real Windows here (the tests parse it).
#
# Three ways to run it:
#   - as cloudbase-init user-data: publish this file (its first line is the
#     #ps1_sysnative marker) with a second line setting the parameters below,
#     $BeachheadWinRM = @{ CertificatePfxBase64 = '...'; ClientCertificatePem = '...' };
#   - from FirstLogonCommands (autounattend-firstlogon.xml), or by hand:
#     powershell.exe -NoProfile -ExecutionPolicy Bypass -File enable-winrm-https.ps1
#         -CertificatePath C:\Beachhead\server.pfx -ClientCertificatePath C:\Beachhead\client.pem
#   - dot-sourced (. .\enable-winrm-https.ps1), to call Enable-BeachheadWinRMHttps.
# Secrets never travel on a command line: the PFX password and the mapped user's
# password come from files (-CertificatePasswordFile, -UserPasswordFile) or from the
# environment (BEACHHEAD_PFX_PASSWORD, BEACHHEAD_WINRM_USER_PASSWORD).

function Enable-BeachheadWinRMHttps {
    [CmdletBinding()]
    param(
        # The listener's certificate: a PFX (with its key), or PEM certificate and key
        # files (PowerShell 7 only: Windows PowerShell 5.1 cannot read PEM keys).
        [string] $CertificatePath = '',
        [string] $CertificatePfxBase64 = '',
        [string] $CertificateKeyPath = '',
        [string] $CertificatePasswordFile = '',
        # Or a certificate already in Cert:\LocalMachine\My.
        [string] $CertificateThumbprint = '',
        # Client certificates to map to a local user (PEM or DER files, or PEM text).
        [string[]] $ClientCertificatePath = @(),
        [string[]] $ClientCertificatePem = @(),
        [string] $ClientCertificateSubject = '',
        [string] $User = 'Administrator',
        [string] $UserPasswordFile = '',
        [int] $Port = 5986,
        [switch] $EnableBasic
    )
    $ErrorActionPreference = 'Stop'
    $server = @{
        Path = $CertificatePath
        PfxBase64 = $CertificatePfxBase64
        KeyPath = $CertificateKeyPath
        PasswordFile = $CertificatePasswordFile
        Thumbprint = $CertificateThumbprint
    }
    $thumbprint = Import-BeachheadServerCertificate @server
    Set-BeachheadWinRMService
    Set-BeachheadHttpsListener -Thumbprint $thumbprint -Port $Port
    Set-BeachheadFirewallRule -Port $Port
    Set-Item -Path WSMan:\localhost\Service\AllowUnencrypted -Value $false
    Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value ([bool] $EnableBasic)
    $pems = @($ClientCertificatePem | Where-Object { $_ })
    foreach ($path in $ClientCertificatePath) {
        if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
            throw "ClientCertificatePath: no such file: $path"
        }
        $pems += , [IO.File]::ReadAllText($path)
    }
    if ($pems.Count -gt 0) {
        Set-Item -Path WSMan:\localhost\Service\Auth\Certificate -Value $true
        $credential = Get-BeachheadUserCredential -User $User -PasswordFile $UserPasswordFile
        foreach ($pem in $pems) {
            Add-BeachheadClientCertificateMapping -Pem $pem -Subject $ClientCertificateSubject -Credential $credential
        }
    }
    Write-Output "beachhead: WinRM over HTTPS on port $Port with certificate $thumbprint"
}

function Read-BeachheadSecret {
    param([string] $File, [string] $Variable, [string] $What)
    if ($File) {
        if (-not (Test-Path -LiteralPath $File -PathType Leaf)) { throw "${What}: no such file: $File" }
        return (Get-Content -LiteralPath $File -Raw).TrimEnd("`r", "`n")
    }
    return [Environment]::GetEnvironmentVariable($Variable)
}

function Import-BeachheadServerCertificate {
    param([string] $Path, [string] $PfxBase64, [string] $KeyPath, [string] $PasswordFile, [string] $Thumbprint)
    if ($Thumbprint) {
        $found = Get-ChildItem -Path Cert:\LocalMachine\My | Where-Object { $_.Thumbprint -eq $Thumbprint }
        if (-not $found) { throw "CertificateThumbprint: no certificate $Thumbprint in Cert:\LocalMachine\My" }
        return $Thumbprint
    }
    $secret = Read-BeachheadSecret -File $PasswordFile -Variable 'BEACHHEAD_PFX_PASSWORD' -What 'CertificatePasswordFile'
    $flags = [Security.Cryptography.X509Certificates.X509KeyStorageFlags]'MachineKeySet,PersistKeySet'
    if ($PfxBase64) {
        $certificate = New-Object Security.Cryptography.X509Certificates.X509Certificate2
        $certificate.Import([Convert]::FromBase64String($PfxBase64), $secret, $flags)
    } elseif ($Path -and $KeyPath) {
        $pemType = [Security.Cryptography.X509Certificates.X509Certificate2]
        if (-not ($pemType.GetMethods() | Where-Object { $_.Name -eq 'CreateFromPemFile' })) {
            throw 'CertificateKeyPath: PEM keys need PowerShell 7 (.NET 5 or later); give a PFX instead'
        }
        $pem = $pemType::CreateFromPemFile($Path, $KeyPath)
        $pfx = $pem.Export([Security.Cryptography.X509Certificates.X509ContentType]::Pfx, '')
        $certificate = New-Object Security.Cryptography.X509Certificates.X509Certificate2
        $certificate.Import($pfx, '', $flags)
    } elseif ($Path) {
        if (-not (Test-Path -LiteralPath $Path -PathType Leaf)) { throw "CertificatePath: no such file: $Path" }
        $certificate = New-Object Security.Cryptography.X509Certificates.X509Certificate2
        $certificate.Import([IO.File]::ReadAllBytes($Path), $secret, $flags)
    } else {
        throw 'give CertificatePath (PFX, or PEM with CertificateKeyPath), CertificatePfxBase64 or CertificateThumbprint'
    }
    if (-not $certificate.HasPrivateKey) { throw 'the server certificate has no private key: WinRM cannot serve with it' }
    $store = New-Object Security.Cryptography.X509Certificates.X509Store('My', 'LocalMachine')
    $store.Open('ReadWrite')
    try {
        $store.Add($certificate)
    } finally {
        $store.Close()
    }
    return $certificate.Thumbprint
}

function Set-BeachheadWinRMService {
    $service = Get-Service -Name WinRM
    if ($service.StartType -ne 'Automatic') { Set-Service -Name WinRM -StartupType Automatic }
    if ($service.Status -ne 'Running') { Start-Service -Name WinRM }
}

function Set-BeachheadHttpsListener {
    param([string] $Thumbprint, [int] $Port)
    $listener = Get-ChildItem -Path WSMan:\localhost\Listener |
        Where-Object { $_.Keys -contains 'Transport=HTTPS' }
    if ($listener) {
        $current = (Get-ChildItem -Path $listener.PSPath | Where-Object { $_.Name -eq 'CertificateThumbprint' }).Value
        $currentPort = (Get-ChildItem -Path $listener.PSPath | Where-Object { $_.Name -eq 'Port' }).Value
        if ($current -eq $Thumbprint -and [int] $currentPort -eq $Port) { return }
        Remove-Item -Path $listener.PSPath -Recurse -Force
    }
    New-Item -Path WSMan:\localhost\Listener -Transport HTTPS -Address * -CertificateThumbPrint $Thumbprint `
        -Port $Port -Force | Out-Null
}

function Set-BeachheadFirewallRule {
    param([int] $Port)
    $name = 'Beachhead-WinRM-HTTPS-In'
    $rule = Get-NetFirewallRule -Name $name -ErrorAction SilentlyContinue
    if ($rule) {
        Set-NetFirewallRule -Name $name -Enabled True -Action Allow -Direction Inbound
        Get-NetFirewallPortFilter -AssociatedNetFirewallRule $rule | Set-NetFirewallPortFilter -Protocol TCP -LocalPort $Port
    } else {
        New-NetFirewallRule -Name $name -DisplayName 'Windows Remote Management (HTTPS-In, Beachhead)' `
            -Direction Inbound -Action Allow -Protocol TCP -LocalPort $Port -Profile Any | Out-Null
    }
}

function Get-BeachheadUserCredential {
    param([string] $User, [string] $PasswordFile)
    $secret = Read-BeachheadSecret -File $PasswordFile -Variable 'BEACHHEAD_WINRM_USER_PASSWORD' -What 'UserPasswordFile'
    if (-not $secret) {
        throw "the password of $User is needed to map client certificates to it: give UserPasswordFile or set BEACHHEAD_WINRM_USER_PASSWORD"
    }
    $secure = ConvertTo-SecureString -String $secret -AsPlainText -Force
    return New-Object Management.Automation.PSCredential($User, $secure)
}

function Add-BeachheadClientCertificateMapping {
    param([string] $Pem, [string] $Subject, [Management.Automation.PSCredential] $Credential)
    $body = ($Pem -replace '-----(BEGIN|END) CERTIFICATE-----', '') -replace '\s', ''
    try {
        $bytes = [Convert]::FromBase64String($body)
        $certificate = New-Object Security.Cryptography.X509Certificates.X509Certificate2(, $bytes)
    } catch {
        throw "client certificate: not a PEM X.509 certificate ($($_.Exception.Message))"
    }
    # A self-signed client certificate is its own issuer: it goes to the trusted roots
    # (as cloudbase-init's WinRM certificate plugin puts it) and, for WinRM, to
    # TrustedPeople; the mapping names the issuer by thumbprint.
    foreach ($storeName in 'Root', 'TrustedPeople') {
        $store = New-Object Security.Cryptography.X509Certificates.X509Store($storeName, 'LocalMachine')
        $store.Open('ReadWrite')
        try {
            $store.Add($certificate)
        } finally {
            $store.Close()
        }
    }
    if (-not $Subject) {
        $Subject = $certificate.GetNameInfo([Security.Cryptography.X509Certificates.X509NameType]::UpnName, $false)
    }
    if (-not $Subject) {
        throw 'client certificate: no UPN subject alternative name (OID 1.3.6.1.4.1.311.20.2.3); give ClientCertificateSubject'
    }
    $issuer = $certificate.Thumbprint
    $existing = Get-ChildItem -Path WSMan:\localhost\ClientCertificate | Where-Object {
        ($_.Keys -contains "Issuer=$issuer") -and ($_.Keys -contains "Subject=$Subject")
    }
    if ($existing) { Remove-Item -Path $existing.PSPath -Recurse -Force }
    New-Item -Path WSMan:\localhost\ClientCertificate -Subject $Subject -URI * -Issuer $issuer `
        -Credential $Credential -Force | Out-Null
}

if ($MyInvocation.InvocationName -ne '.') {
    $options = @{}
    if (Test-Path -Path variable:BeachheadWinRM) { $options = $BeachheadWinRM }
    try {
        Enable-BeachheadWinRMHttps @options @args
    } catch {
        [Console]::Error.WriteLine("beachhead: enable-winrm-https: $($_.Exception.Message)")
        exit 1
    }
}

use super::*;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// The service part of a real gateway's description (miniupnpd's layout).
const DESCRIPTION_XML: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device>
<deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList>
<deviceList><device><deviceList><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType>
<controlURL>http://198.51.100.1:5000/ctl/PPP</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL> /ctl/IPConn </controlURL><eventSubURL>/evt/IPConn</eventSubURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"#;

fn base() -> Location {
    Location::parse("http://198.51.100.1:5000/rootDesc.xml").unwrap()
}

#[test]
fn a_search_answer_names_the_description_on_the_gateway_only() {
    let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLocation: http://198.51.100.1:5000/rootDesc.xml\r\n\r\n";
    assert_eq!(parse_search_response(answer, GATEWAY), Some(base()));
    let elsewhere = b"HTTP/1.1 200 OK\r\nLOCATION: http://198.51.100.66:5000/rootDesc.xml\r\n\r\n";
    assert_eq!(parse_search_response(elsewhere, GATEWAY), None);
    let by_name = b"HTTP/1.1 200 OK\r\nLOCATION: http://router.lan:5000/rootDesc.xml\r\n\r\n";
    assert_eq!(parse_search_response(by_name, GATEWAY), None);
    let search = search_request();
    assert!(search.starts_with(b"M-SEARCH * HTTP/1.1\r\n"));
    assert_eq!(
        parse_search_response(&search, GATEWAY),
        None,
        "a search is no answer"
    );
}

#[test]
fn the_ip_connection_service_is_found_in_a_description() {
    let service = parse_description(DESCRIPTION_XML, &base()).unwrap();
    assert_eq!(
        service.service_type,
        "urn:schemas-upnp-org:service:WANIPConnection:1"
    );
    assert_eq!(service.control.path, "/ctl/IPConn");
    assert_eq!(service.control.addr, base().addr);
    // A service whose control URL points elsewhere is never used.
    let foreign = DESCRIPTION_XML
        .replace(" /ctl/IPConn ", "http://192.0.2.66/ctl/IPConn")
        .replace(
            "http://198.51.100.1:5000/ctl/PPP",
            "http://192.0.2.66/ctl/PPP",
        );
    assert_eq!(parse_description(&foreign, &base()), None);
}

#[test]
fn soap_calls_name_the_service_and_action() {
    let service = parse_description(DESCRIPTION_XML, &base()).unwrap();
    let add = String::from_utf8(add_port_mapping(
        &service,
        51870,
        Ipv4Addr::new(198, 51, 100, 10),
        51870,
        7200,
    ))
    .unwrap();
    assert!(add.starts_with("POST /ctl/IPConn HTTP/1.1\r\nHost: 198.51.100.1:5000\r\n"));
    assert!(add
        .contains("SOAPAction: \"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping\""));
    assert!(add.contains("<NewExternalPort>51870</NewExternalPort><NewProtocol>UDP</NewProtocol>"));
    assert!(add.contains("<NewInternalClient>198.51.100.10</NewInternalClient>"));
    assert!(add.contains("<NewLeaseDuration>7200</NewLeaseDuration>"));
    let (head, body) = add.split_once("\r\n\r\n").unwrap();
    assert!(head.contains(&format!("Content-Length: {}", body.len())));
}

#[test]
fn soap_answers_and_faults_parse() {
    let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<s:Envelope><s:Body><u:GetExternalIPAddressResponse xmlns:u=\"x\"><NewExternalIPAddress>203.0.113.1</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
    let Some(SoapAnswer::Ok(body)) = parse_soap(ok.as_bytes()) else {
        panic!("not ok");
    };
    assert_eq!(element(&body, "NewExternalIPAddress"), Some("203.0.113.1"));
    let fault = "HTTP/1.1 500 Internal Server Error\r\n\r\n<s:Envelope><s:Body><s:Fault><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>718</errorCode><errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>";
    assert_eq!(
        parse_soap(fault.as_bytes()),
        Some(SoapAnswer::Fault(CONFLICT_IN_MAPPING_ENTRY))
    );
    let chunked =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n<a>1<\r\n3\r\n/a>\r\n0\r\n\r\n";
    assert_eq!(
        parse_http(chunked.as_bytes()),
        Some((200, "<a>1</a>".to_owned()))
    );
}

#[test]
fn malformed_input_is_none_never_a_panic() {
    assert_eq!(Location::parse("https://198.51.100.1/"), None);
    assert_eq!(Location::parse("http://198.51.100.1:99999/"), None);
    assert_eq!(
        Location::parse("http://198.51.100.1").map(|l| l.path),
        Some("/".to_owned())
    );
    assert_eq!(parse_http(b""), None);
    assert_eq!(parse_http(b"HTTP/1.1 abc\r\n\r\n"), None);
    assert_eq!(
        parse_http(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\nab"),
        None
    );
    assert_eq!(element("<a>unterminated", "a"), None);
    assert_eq!(parse_description("<service><serviceType>", &base()), None);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..300 {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                b"<>/:\r\n HTTP/1.1 200service0123456789abcdefLOCATION"[(seed % 49) as usize]
            })
            .collect();
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_search_response(&bytes, GATEWAY);
        let _ = parse_soap(&bytes);
        let _ = parse_description(&text, &base());
        let _ = element(&text, "service");
    }
}
